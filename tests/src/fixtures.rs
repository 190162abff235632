//! Small but real ONNX models, written in code, for each kind's contract and
//! for the ways a model can break it. ONNX Runtime loads and runs them.

use nurture_proto::onnx::build::{
    Dim, attr_int, attr_ints, attr_string, attr_strings, float_tensor, model, node, tensor_value,
};
use nurture_proto::onnx::tensor_proto::DataType;
use nurture_proto::onnx::{GraphProto, TensorProto};
use prost::Message;

/// How to build a tabular fixture; [`Tabular::new`] meets the contract.
#[derive(Debug, Clone)]
pub struct Tabular {
    /// Name of the single input (contract: `features`).
    pub input_name: &'static str,
    /// Input element type (contract: float32).
    pub input_type: DataType,
    /// Number of input columns.
    pub features: usize,
    /// Number of output classes.
    pub classes: usize,
    /// Whether the class dimension is declared dynamic, so only a run shows
    /// the real number of classes.
    pub dynamic_classes: bool,
    /// Whether the scores go through a softmax (contract: probabilities).
    pub softmax: bool,
    /// Seeds the weights, so different seeds give different bytes.
    pub seed: u64,
    /// Extra work per row that does not change the answer: this many
    /// 1024×1024 matrix products on the way to a zero added to the logits
    /// (a slow model, for the latency guard).
    pub slow: usize,
}

impl Tabular {
    /// A contract-meeting model with `features` inputs and `classes` outputs.
    pub fn new(features: usize, classes: usize, seed: u64) -> Self {
        Tabular {
            input_name: "features",
            input_type: DataType::Float,
            features,
            classes,
            dynamic_classes: false,
            softmax: true,
            seed,
            slow: 0,
        }
    }

    /// Encodes the model: `softmax(features · W + b)` as `probabilities`.
    pub fn build(&self) -> Vec<u8> {
        let (f, c) = (self.features as i64, self.classes as i64);
        let weights = pseudo_random(self.seed, self.features * self.classes);
        let bias = pseudo_random(self.seed ^ 0x9e37, self.classes);
        let mut nodes = Vec::new();
        let mut initializer = Vec::new();
        let logits_input = if self.input_type == DataType::Double {
            initializer.push(TensorProto {
                name: "W".into(),
                dims: vec![f, c],
                data_type: DataType::Double as i32,
                double_data: weights.iter().map(|w| f64::from(*w)).collect(),
                ..Default::default()
            });
            nodes.push(node(
                "MatMul",
                "",
                &[self.input_name, "W"],
                &["scores64"],
                vec![],
            ));
            nodes.push(node(
                "Cast",
                "",
                &["scores64"],
                &["scores"],
                vec![attr_int("to", DataType::Float as i64)],
            ));
            "scores"
        } else {
            initializer.push(float_tensor("W", &[f, c], weights));
            nodes.push(node(
                "MatMul",
                "",
                &[self.input_name, "W"],
                &["scores"],
                vec![],
            ));
            "scores"
        };
        initializer.push(float_tensor("B", &[c], bias));
        let logits_input = if self.slow > 0 && self.input_type == DataType::Float {
            const WIDE: i64 = 1024;
            let wide = WIDE as usize;
            initializer.push(float_tensor(
                "P",
                &[f, WIDE],
                pseudo_random(self.seed ^ 0x51, self.features * wide),
            ));
            initializer.push(float_tensor(
                "M",
                &[WIDE, WIDE],
                vec![1.0 / WIDE as f32; wide * wide],
            ));
            initializer.push(float_tensor(
                "Z",
                &[WIDE, c],
                vec![0.0; wide * self.classes],
            ));
            nodes.push(node("MatMul", "", &[self.input_name, "P"], &["h0"], vec![]));
            for i in 0..self.slow {
                let (from, to) = (format!("h{i}"), format!("h{}", i + 1));
                nodes.push(node(
                    "MatMul",
                    "",
                    &[from.as_str(), "M"],
                    &[to.as_str()],
                    vec![],
                ));
            }
            let last = format!("h{}", self.slow);
            nodes.push(node(
                "MatMul",
                "",
                &[last.as_str(), "Z"],
                &["nothing"],
                vec![],
            ));
            nodes.push(node(
                "Add",
                "",
                &[logits_input, "nothing"],
                &["slow_scores"],
                vec![],
            ));
            "slow_scores"
        } else {
            logits_input
        };
        if self.softmax {
            nodes.push(node("Add", "", &[logits_input, "B"], &["logits"], vec![]));
            nodes.push(node(
                "Softmax",
                "",
                &["logits"],
                &["probabilities"],
                vec![attr_int("axis", -1)],
            ));
        } else {
            nodes.push(node(
                "Add",
                "",
                &[logits_input, "B"],
                &["probabilities"],
                vec![],
            ));
        }
        let class_dim = if self.dynamic_classes {
            Dim::Dynamic("classes")
        } else {
            Dim::Fixed(c)
        };
        let graph = GraphProto {
            name: "fixture".into(),
            node: nodes,
            initializer,
            input: vec![tensor_value(
                self.input_name,
                self.input_type,
                &[Dim::Dynamic("batch"), Dim::Fixed(f)],
            )],
            output: vec![tensor_value(
                "probabilities",
                DataType::Float,
                &[Dim::Dynamic("batch"), class_dim],
            )],
            ..Default::default()
        };
        model(graph, "fixture", &[]).encode_to_vec()
    }
}

/// Words the emotion fixture recognises, one per state.
pub const EMOTION_WORDS: &[&str] = &[
    "thrilled", "worried", "annoyed", "sure", "hopeful", "confused", "letdown", "happy", "swamped",
    "ok",
];

/// An emotion model meeting the contract: `text` string `[batch, 1]` →
/// `probabilities` float `[batch, 10]`. Each input text is one token; the
/// model leans towards the state whose word it is.
pub fn emotion(seed: u64) -> Vec<u8> {
    let k = EMOTION_WORDS.len() as i64;
    let mut weights = pseudo_random(seed, (k * 10) as usize);
    for i in 0..k as usize {
        weights[i * 10 + i] += 4.0;
    }
    let graph = GraphProto {
        name: "emotion_fixture".into(),
        node: vec![
            node(
                "TfIdfVectorizer",
                "",
                &["text"],
                &["counts"],
                vec![
                    attr_string("mode", "TF"),
                    attr_int("min_gram_length", 1),
                    attr_int("max_gram_length", 1),
                    attr_int("max_skip_count", 0),
                    attr_ints("ngram_counts", vec![0]),
                    attr_ints("ngram_indexes", (0..k).collect()),
                    attr_strings("pool_strings", EMOTION_WORDS),
                ],
            ),
            node("MatMul", "", &["counts", "W"], &["scores"], vec![]),
            node("Add", "", &["scores", "B"], &["logits"], vec![]),
            node(
                "Softmax",
                "",
                &["logits"],
                &["probabilities"],
                vec![attr_int("axis", -1)],
            ),
        ],
        initializer: vec![
            float_tensor("W", &[k, 10], weights),
            float_tensor("B", &[10], vec![0.0; 10]),
        ],
        input: vec![tensor_value(
            "text",
            DataType::String,
            &[Dim::Dynamic("batch"), Dim::Fixed(1)],
        )],
        output: vec![tensor_value(
            "probabilities",
            DataType::Float,
            &[Dim::Dynamic("batch"), Dim::Fixed(10)],
        )],
        ..Default::default()
    };
    model(graph, "fixture", &[]).encode_to_vec()
}

/// Deterministic values in [-1, 1) (xorshift), so fixtures are reproducible.
fn pseudo_random(seed: u64, count: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A complete, plausible `LeadProfile` (every feature set), for tests and
/// benchmarks that need a valid lead.
pub fn lead_profile(id: &str) -> nurture_proto::v1::LeadProfile {
    nurture_proto::v1::LeadProfile {
        lead_id: id.to_owned(),
        days_since_first_contact: Some(40.0),
        days_since_last_contact: Some(3.0),
        days_since_last_reply: Some(21.0),
        email_open_rate: Some(0.35),
        email_click_rate: Some(0.05),
        sms_reply_rate: Some(0.4),
        call_answer_rate: Some(0.2),
        video_join_rate: Some(0.1),
        messages_sent_30d: Some(6),
        messages_received_30d: Some(2),
        avg_response_hours: Some(14.0),
        sentiment_score: Some(-0.4),
        complaints_90d: Some(1),
        website_visits_30d: Some(3),
        listings_viewed_30d: Some(5),
        saved_searches: Some(1),
        showings_attended: Some(0),
        pre_approved: Some(false),
        mortgage_calculator_uses_30d: Some(0),
        budget_k_usd: Some(380.0),
        time_zone: String::new(),
    }
}

/// Rows of a generated dataset (`nurture-trainer generate`): each row as a
/// `LeadProfile` (every column named like a LeadProfile field) and its label
/// column's text.
pub fn labelled_leads(
    csv: &std::path::Path,
    label: &str,
) -> Vec<(nurture_proto::v1::LeadProfile, String)> {
    let text = std::fs::read_to_string(csv).expect("a generated dataset");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    lines
        .map(|line| {
            let cells: Vec<&str> = line.split(',').collect();
            let mut profile = nurture_proto::v1::LeadProfile::default();
            let mut answer = String::new();
            for (name, cell) in header.iter().zip(&cells) {
                match *name {
                    "lead_id" => profile.lead_id = (*cell).to_owned(),
                    other if other == label => answer = (*cell).to_owned(),
                    // Other columns (ids, labels of other kinds) are left out.
                    other => {
                        if let Ok(value) = cell.parse() {
                            profile.set_feature(other, value);
                        }
                    }
                }
            }
            (profile, answer)
        })
        .collect()
}
