//! The emotion model as one ONNX graph, text in, probabilities out:
//!
//! ```text
//! text ─ StringNormalizer(lower) ─┬─ Tokenizer(words) ─ TfIdfVectorizer ─ L2 ─┐
//!                                 └─ Tokenizer(chars) ─ TfIdfVectorizer ─ L2 ─┴─ Concat ─ MatMul+Add ─ Softmax
//! ```

use nurture_models::kind::{PROBABILITIES_OUTPUT, TEXT_INPUT};
use nurture_proto::onnx::build::{
    Dim, attr_floats, attr_int, attr_ints, attr_string, attr_strings, float_tensor, model, node,
    tensor_value,
};
use nurture_proto::onnx::tensor_proto::DataType;
use nurture_proto::onnx::{GraphProto, NodeProto};
use prost::Message;

use crate::text::logistic::Logistic;
use crate::text::{Block, CHAR_PATTERN, NORM_EPSILON, Vectorizer, WORD_PATTERN};

/// Locale the graph's `StringNormalizer` lowercases in; ONNX Runtime needs
/// one the machine has, and `C.UTF-8` is on every glibc system we target.
pub const LOCALE: &str = "C.UTF-8";

/// Padding token of the tokenizers; it can never be a real token (neither
/// pattern matches `#`), so no n-gram containing it is in a vocabulary.
const PAD: &str = "#";

fn block_nodes(prefix: &str, block: &Block, pattern: &str, nodes: &mut Vec<NodeProto>) -> String {
    let tokens = format!("{prefix}_tokens");
    let tfidf = format!("{prefix}_tfidf");
    let norm = format!("{prefix}_norm");
    let safe_norm = format!("{prefix}_safe_norm");
    let features = format!("{prefix}_features");
    nodes.push(node(
        "Tokenizer",
        "com.microsoft",
        &["lowered"],
        &[&tokens],
        vec![
            attr_int("mark", 0),
            attr_int("mincharnum", 1),
            attr_string("pad_value", PAD),
            attr_string("tokenexp", pattern),
        ],
    ));
    let pool: Vec<&str> = block
        .vocabulary
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    nodes.push(node(
        "TfIdfVectorizer",
        "",
        &[&tokens],
        &[&tfidf],
        vec![
            attr_string("mode", "TFIDF"),
            attr_int("min_gram_length", block.range.0 as i64),
            attr_int("max_gram_length", block.range.1 as i64),
            attr_int("max_skip_count", 0),
            attr_ints("ngram_counts", block.ngram_counts()),
            attr_ints("ngram_indexes", (0..block.width() as i64).collect()),
            attr_strings("pool_strings", &pool),
            attr_floats("weights", block.idf.clone()),
        ],
    ));
    nodes.push(node(
        "ReduceL2",
        "",
        &[&tfidf],
        &[&norm],
        vec![attr_ints("axes", vec![1]), attr_int("keepdims", 1)],
    ));
    nodes.push(node("Max", "", &[&norm, "epsilon"], &[&safe_norm], vec![]));
    nodes.push(node("Div", "", &[&tfidf, &safe_norm], &[&features], vec![]));
    features
}

/// Encodes the vectorizer and classifier as an ONNX model.
pub fn to_onnx(vectorizer: &Vectorizer, classifier: &Logistic, producer_version: &str) -> Vec<u8> {
    let mut nodes = vec![node(
        "StringNormalizer",
        "",
        &[TEXT_INPUT],
        &["lowered"],
        vec![
            attr_string("case_change_action", "LOWER"),
            attr_int("is_case_sensitive", 0),
            attr_string("locale", LOCALE),
        ],
    )];
    let mut initializer = vec![float_tensor("epsilon", &[1], vec![NORM_EPSILON as f32])];
    let words = block_nodes("word", &vectorizer.words, WORD_PATTERN, &mut nodes);
    let chars = block_nodes("char", &vectorizer.chars, CHAR_PATTERN, &mut nodes);
    nodes.push(node(
        "Concat",
        "",
        &[&words, &chars],
        &["features"],
        vec![attr_int("axis", 1)],
    ));
    let width = vectorizer.width() as i64;
    let classes = classifier.classes as i64;
    initializer.push(float_tensor(
        "weights",
        &[width, classes],
        classifier.weights.clone(),
    ));
    initializer.push(float_tensor("bias", &[classes], classifier.bias.clone()));
    nodes.push(node(
        "MatMul",
        "",
        &["features", "weights"],
        &["scores"],
        vec![],
    ));
    nodes.push(node("Add", "", &["scores", "bias"], &["logits"], vec![]));
    nodes.push(node(
        "Softmax",
        "",
        &["logits"],
        &[PROBABILITIES_OUTPUT],
        vec![attr_int("axis", -1)],
    ));
    let graph = GraphProto {
        name: "nurture_emotion".to_owned(),
        node: nodes,
        initializer,
        input: vec![tensor_value(
            TEXT_INPUT,
            DataType::String,
            &[Dim::Dynamic("batch")],
        )],
        output: vec![tensor_value(
            PROBABILITIES_OUTPUT,
            DataType::Float,
            &[Dim::Dynamic("batch"), Dim::Fixed(classes)],
        )],
        ..Default::default()
    };
    model(graph, producer_version, &[("com.microsoft", 1)]).encode_to_vec()
}
