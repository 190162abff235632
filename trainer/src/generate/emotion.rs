//! Synthetic lead messages with an emotional state.
//!
//! A message is an opener, one clause (a state's phrase about a topic) or,
//! for mixed feelings, two clauses joined by "but" (the state after "but" is
//! the label), and a closing. Negated phrases ("not happy with") belong to the
//! state they express. Words get typos, and a share of labels is replaced by
//! a random other state, which caps the accuracy any model can reach.

use rand::RngExt;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

/// Share of messages with two clauses.
pub const MIXED_SHARE: f64 = 0.15;
/// Chance that a word gets a typo.
pub const TYPO_RATE: f64 = 0.04;
/// Share of labels replaced by a random other state.
pub const LABEL_NOISE: f64 = 0.03;

/// Phrases per state, in `EMOTION_LABELS` order.
const PHRASES: [&[&str]; 10] = [
    // excited
    &[
        "i'm so excited about",
        "can't wait to see",
        "we are thrilled about",
        "this is amazing news about",
        "so pumped about",
        "absolutely love",
        "we're over the moon about",
    ],
    // anxious
    &[
        "i'm worried about",
        "i'm nervous about",
        "a bit scared about",
        "losing sleep over",
        "i keep stressing about",
        "really anxious about",
        "uneasy about",
    ],
    // frustrated
    &[
        "i'm fed up with",
        "this is ridiculous,",
        "so annoyed about",
        "i'm tired of waiting on",
        "nobody is answering about",
        "sick of the delays with",
        "not okay with how you handled",
    ],
    // confident
    &[
        "we're ready to move forward with",
        "i'm sure about",
        "no doubts about",
        "we know exactly what we want in",
        "i'm not worried about",
        "pretty certain about",
        "we're confident in",
    ],
    // hopeful
    &[
        "fingers crossed for",
        "hoping it works out with",
        "i have a good feeling about",
        "we hope they accept",
        "keeping our hopes up for",
        "optimistic about",
        "praying it goes through with",
    ],
    // confused
    &[
        "i don't understand",
        "can you explain",
        "what does this mean for",
        "i'm confused about",
        "not sure about",
        "lost with the paperwork for",
        "which step comes next for",
    ],
    // disappointed
    &[
        "i'm disappointed with",
        "not happy with",
        "a real letdown,",
        "expected more from",
        "sad that we lost",
        "not impressed by",
        "bummed about",
    ],
    // satisfied
    &[
        "thank you so much for",
        "really happy with",
        "great job on",
        "everything went smoothly with",
        "pleased with",
        "appreciate your help with",
        "glad we chose",
    ],
    // overwhelmed
    &[
        "too much going on with",
        "drowning in paperwork for",
        "i can't keep up with",
        "overwhelmed by",
        "way too many options for",
        "my head is spinning about",
        "so much to handle with",
    ],
    // neutral
    &[
        "just checking in about",
        "please send the details for",
        "what time works for",
        "can we schedule",
        "following up on",
        "here is my question about",
        "noting the update on",
    ],
];

const TOPICS: &[&str] = &[
    "the house on maple street",
    "the condo downtown",
    "the listing you sent",
    "the open house",
    "our offer",
    "the inspection",
    "the mortgage",
    "the neighborhood",
    "the closing date",
    "the price",
    "the appraisal",
    "the townhouse",
    "the new listings",
    "the showing on saturday",
];

const OPENERS: &[&str] = &[
    "",
    "",
    "hi,",
    "hello,",
    "hey,",
    "so",
    "honestly",
    "thanks for the update.",
    "quick note:",
];
const CLOSINGS: &[&str] = &[
    "",
    "",
    "",
    "let me know.",
    "talk soon.",
    "call me when you can.",
    "thanks.",
    "!!",
    "...",
];

/// One generated message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The text.
    pub text: String,
    /// The label written to the dataset (after label noise).
    pub label: usize,
    /// The state the text was built to express.
    pub intended: usize,
}

fn typo(rng: &mut ChaCha8Rng, word: &str) -> String {
    let chars: Vec<char> = word.chars().collect();
    if chars.len() < 4 || !rng.random_bool(TYPO_RATE) {
        return word.to_owned();
    }
    let at = rng.random_range(1..chars.len() - 1);
    let mut out = chars.clone();
    if rng.random_bool(0.5) {
        out.swap(at, at + 1);
    } else {
        out.remove(at);
    }
    out.into_iter().collect()
}

fn clause(rng: &mut ChaCha8Rng, state: usize) -> String {
    let phrase = PHRASES[state].choose(rng).expect("phrases are not empty");
    let topic = TOPICS.choose(rng).expect("topics are not empty");
    format!("{phrase} {topic}")
}

/// Draws one message.
pub fn message(rng: &mut ChaCha8Rng) -> Message {
    let state = rng.random_range(0..PHRASES.len());
    let body = if rng.random_bool(MIXED_SHARE) {
        let mut other = rng.random_range(0..PHRASES.len() - 1);
        if other >= state {
            other += 1;
        }
        format!("{}, but {}", clause(rng, other), clause(rng, state))
    } else {
        clause(rng, state)
    };
    let opener = OPENERS.choose(rng).expect("openers are not empty");
    let closing = CLOSINGS.choose(rng).expect("closings are not empty");
    let raw = format!("{opener} {body}. {closing}");
    let words: Vec<String> = raw.split_whitespace().map(|word| typo(rng, word)).collect();
    let mut text = words.join(" ");
    if rng.random_bool(0.3) {
        // Some people write in capitals at the start of a sentence.
        let mut chars = text.chars();
        if let Some(first) = chars.next() {
            text = first.to_uppercase().chain(chars).collect();
        }
    }
    let label = if rng.random_bool(LABEL_NOISE) {
        let mut other = rng.random_range(0..PHRASES.len() - 1);
        if other >= state {
            other += 1;
        }
        other
    } else {
        state
    };
    Message {
        text,
        label,
        intended: state,
    }
}

/// Highest accuracy any model can reach: the noisy labels are wrong for
/// every model that predicts the intended state.
pub fn accuracy_bound() -> f64 {
    1.0 - LABEL_NOISE
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn messages_are_ascii_and_labelled() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let messages: Vec<Message> = (0..2_000).map(|_| message(&mut rng)).collect();
        assert!(
            messages
                .iter()
                .all(|m| m.text.is_ascii() && !m.text.trim().is_empty() && m.label < 10)
        );
        let noisy = messages.iter().filter(|m| m.label != m.intended).count();
        assert!((20..120).contains(&noisy), "{noisy}");
        assert!(messages.iter().any(|m| m.text.contains(", but ")));
    }
}
