//! The emotion text model: TF-IDF over word 1-2-grams and character 2-4-grams,
//! each block L2-normalised, then multinomial logistic regression.
//!
//! The analyzer here mirrors the ONNX graph of `export::text` operator by
//! operator (lowercase, tokenize, count n-grams, weight, normalise), so that
//! serving runs the very same pipeline; the parity check proves it on every
//! holdout text.

pub mod logistic;

use std::collections::{BTreeMap, HashMap};

/// Word tokens: maximal runs of these characters (after lowercasing).
pub const WORD_PATTERN: &str = "[a-z0-9']+";
/// Character tokens: single characters from this class.
pub const CHAR_PATTERN: &str = "[a-z0-9' ]";

/// Settings of the text features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextParams {
    /// Word n-gram lengths.
    pub word_ngrams: (usize, usize),
    /// Character n-gram lengths.
    pub char_ngrams: (usize, usize),
    /// Fewest training documents an n-gram must occur in.
    pub min_df: usize,
    /// Most word n-grams kept (by document frequency).
    pub max_word_features: usize,
    /// Most character n-grams kept.
    pub max_char_features: usize,
}

impl Default for TextParams {
    fn default() -> Self {
        TextParams {
            word_ngrams: (1, 2),
            char_ngrams: (2, 4),
            min_df: 2,
            max_word_features: 20_000,
            max_char_features: 30_000,
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '\''
}

/// Lowercases as the graph's `StringNormalizer` does for ASCII text.
pub fn normalize(text: &str) -> String {
    text.to_lowercase()
}

/// Word tokens of normalised text.
pub fn word_tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !is_word_char(c))
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Character tokens of normalised text.
pub fn char_tokens(text: &str) -> Vec<String> {
    text.chars()
        .filter(|c| is_word_char(*c) || *c == ' ')
        .map(String::from)
        .collect()
}

/// All n-grams of `tokens` with lengths in `range`, as token sequences.
fn ngrams(tokens: &[String], range: (usize, usize)) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for n in range.0..=range.1 {
        for window in tokens.windows(n) {
            out.push(window.to_vec());
        }
    }
    out
}

/// One block of n-gram features with its vocabulary and idf weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// N-gram lengths.
    pub range: (usize, usize),
    /// N-grams by column, shorter ones first, then lexicographic.
    pub vocabulary: Vec<Vec<String>>,
    /// Smoothed idf of each column: ln((1 + n) / (1 + df)) + 1.
    pub idf: Vec<f32>,
    index: HashMap<Vec<String>, usize>,
}

impl Block {
    fn fit(
        documents: &[Vec<String>],
        range: (usize, usize),
        min_df: usize,
        max_features: usize,
    ) -> Block {
        let mut df: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for tokens in documents {
            let mut seen: Vec<Vec<String>> = ngrams(tokens, range);
            seen.sort();
            seen.dedup();
            for gram in seen {
                *df.entry(gram).or_default() += 1;
            }
        }
        let mut kept: Vec<(Vec<String>, usize)> = df
            .into_iter()
            .filter(|(_, count)| *count >= min_df)
            .collect();
        // Most frequent first; ties by n-gram, so the choice is deterministic.
        kept.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        kept.truncate(max_features);
        // Column order: by length (the ONNX pool lists 1-grams, then 2-grams...), then lexicographic.
        kept.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
        let n = documents.len() as f64;
        let idf = kept
            .iter()
            .map(|(_, count)| (((1.0 + n) / (1.0 + *count as f64)).ln() + 1.0) as f32)
            .collect();
        let vocabulary: Vec<Vec<String>> = kept.into_iter().map(|(gram, _)| gram).collect();
        let index = vocabulary
            .iter()
            .enumerate()
            .map(|(i, gram)| (gram.clone(), i))
            .collect();
        Block {
            range,
            vocabulary,
            idf,
            index,
        }
    }

    /// L2-normalised TF-IDF of one document's tokens, as sorted (column, value).
    fn transform(&self, tokens: &[String]) -> Vec<(usize, f64)> {
        let mut counts: BTreeMap<usize, f64> = BTreeMap::new();
        for gram in ngrams(tokens, self.range) {
            if let Some(column) = self.index.get(&gram) {
                *counts.entry(*column).or_default() += 1.0;
            }
        }
        let weighted: Vec<(usize, f64)> = counts
            .into_iter()
            .map(|(c, tf)| (c, tf * f64::from(self.idf[c])))
            .collect();
        let norm = weighted
            .iter()
            .map(|(_, v)| v * v)
            .sum::<f64>()
            .sqrt()
            .max(NORM_EPSILON);
        weighted.into_iter().map(|(c, v)| (c, v / norm)).collect()
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.vocabulary.len()
    }

    /// The `ngram_counts` attribute of ONNX `TfIdfVectorizer`: for each
    /// n-gram length from 1 to the longest, where its n-grams start in the
    /// flattened token pool.
    pub fn ngram_counts(&self) -> Vec<i64> {
        (1..=self.range.1)
            .map(|n| {
                self.vocabulary
                    .iter()
                    .filter(|gram| gram.len() < n)
                    .map(Vec::len)
                    .sum::<usize>() as i64
            })
            .collect()
    }
}

/// Smallest norm divided by (an empty document stays all zeros).
pub const NORM_EPSILON: f64 = 1e-12;

/// The fitted text features.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectorizer {
    /// Word n-grams.
    pub words: Block,
    /// Character n-grams.
    pub chars: Block,
}

/// A sparse row.
pub type SparseRow = Vec<(usize, f64)>;

impl Vectorizer {
    /// Learns vocabularies and idf weights from training texts.
    pub fn fit(texts: &[&str], params: TextParams) -> Vectorizer {
        let normalized: Vec<String> = texts.iter().map(|t| normalize(t)).collect();
        let words: Vec<Vec<String>> = normalized.iter().map(|t| word_tokens(t)).collect();
        let chars: Vec<Vec<String>> = normalized.iter().map(|t| char_tokens(t)).collect();
        Vectorizer {
            words: Block::fit(
                &words,
                params.word_ngrams,
                params.min_df,
                params.max_word_features,
            ),
            chars: Block::fit(
                &chars,
                params.char_ngrams,
                params.min_df,
                params.max_char_features,
            ),
        }
    }

    /// Total number of columns (words, then characters).
    pub fn width(&self) -> usize {
        self.words.width() + self.chars.width()
    }

    /// The feature row of one text.
    pub fn transform(&self, text: &str) -> SparseRow {
        let normalized = normalize(text);
        let mut row = self.words.transform(&word_tokens(&normalized));
        let offset = self.words.width();
        row.extend(
            self.chars
                .transform(&char_tokens(&normalized))
                .into_iter()
                .map(|(c, v)| (c + offset, v)),
        );
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_graph_patterns() {
        let text = normalize("Hi, I'm NOT happy!! 2 homes");
        assert_eq!(
            word_tokens(&text),
            ["hi", "i'm", "not", "happy", "2", "homes"]
        );
        assert_eq!(char_tokens("a, b!").concat(), "a b");
    }

    #[test]
    fn vocabulary_is_ordered_for_the_onnx_pool() {
        let vectorizer = Vectorizer::fit(
            &["not happy", "not happy at all", "happy"],
            TextParams {
                min_df: 1,
                ..Default::default()
            },
        );
        let lengths: Vec<usize> = vectorizer.words.vocabulary.iter().map(Vec::len).collect();
        assert!(lengths.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            vectorizer.words.ngram_counts(),
            vec![0, lengths.iter().filter(|l| **l == 1).count() as i64]
        );
        // Character blocks start at 2-grams: 1- and 2-grams both start at 0,
        // 3-grams after all 2-gram tokens.
        let counts = vectorizer.chars.ngram_counts();
        let bigrams = vectorizer
            .chars
            .vocabulary
            .iter()
            .filter(|g| g.len() == 2)
            .count() as i64;
        assert_eq!(counts[..3], [0, 0, 2 * bigrams]);
        let row = vectorizer.transform("NOT happy");
        let norm: f64 = row
            .iter()
            .filter(|(c, _)| *c < vectorizer.words.width())
            .map(|(_, v)| v * v)
            .sum();
        assert!((norm - 1.0).abs() < 1e-9);
        assert!(vectorizer.transform("").is_empty());
    }
}
