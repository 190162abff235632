//! A [`Booster`] as an ONNX graph:
//! `features → TreeEnsembleRegressor (raw scores) → Sigmoid | Softmax → probabilities`.

use nurture_models::kind::{FEATURES_INPUT, PROBABILITIES_OUTPUT};
use nurture_proto::onnx::GraphProto;
use nurture_proto::onnx::build::{
    Dim, attr_floats, attr_int, attr_ints, attr_string, attr_strings, float_tensor, model, node,
    tensor_value,
};
use nurture_proto::onnx::tensor_proto::DataType;
use prost::Message;

use crate::gbdt::Booster;

/// Encodes the booster as an ONNX model taking `width` features.
pub fn to_onnx(booster: &Booster, width: usize, producer_version: &str) -> Vec<u8> {
    let outputs = booster.outputs();
    let mut tree_ids = Vec::new();
    let mut node_ids = Vec::new();
    let mut feature_ids = Vec::new();
    let mut modes: Vec<&str> = Vec::new();
    let mut values = Vec::new();
    let mut true_ids = Vec::new();
    let mut false_ids = Vec::new();
    let mut target_tree_ids = Vec::new();
    let mut target_node_ids = Vec::new();
    let mut target_ids = Vec::new();
    let mut target_weights = Vec::new();
    for (iteration, trees) in booster.trees.iter().enumerate() {
        for (output, tree) in trees.iter().enumerate() {
            let tree_id = (iteration * outputs + output) as i64;
            for (index, tree_node) in tree.nodes.iter().enumerate() {
                tree_ids.push(tree_id);
                node_ids.push(index as i64);
                if tree_node.leaf {
                    feature_ids.push(0);
                    modes.push("LEAF");
                    values.push(0.0);
                    true_ids.push(0);
                    false_ids.push(0);
                    target_tree_ids.push(tree_id);
                    target_node_ids.push(index as i64);
                    target_ids.push(output as i64);
                    target_weights.push(tree_node.value);
                } else {
                    feature_ids.push(tree_node.feature as i64);
                    modes.push("BRANCH_LEQ");
                    values.push(tree_node.threshold);
                    true_ids.push(tree_node.left as i64);
                    false_ids.push(tree_node.right as i64);
                }
            }
        }
    }
    let ensemble = node(
        "TreeEnsembleRegressor",
        "ai.onnx.ml",
        &[FEATURES_INPUT],
        &["raw_scores"],
        vec![
            attr_string("aggregate_function", "SUM"),
            attr_floats("base_values", booster.base.clone()),
            attr_int("n_targets", outputs as i64),
            attr_ints("nodes_treeids", tree_ids),
            attr_ints("nodes_nodeids", node_ids),
            attr_ints("nodes_featureids", feature_ids),
            attr_strings("nodes_modes", &modes),
            attr_floats("nodes_values", values),
            attr_ints("nodes_truenodeids", true_ids),
            attr_ints("nodes_falsenodeids", false_ids),
            attr_string("post_transform", "NONE"),
            attr_ints("target_treeids", target_tree_ids),
            attr_ints("target_nodeids", target_node_ids),
            attr_ints("target_ids", target_ids),
            attr_floats("target_weights", target_weights),
        ],
    );
    let mut nodes = vec![ensemble];
    let mut initializer = Vec::new();
    if booster.classes == 2 {
        nodes.push(node("Sigmoid", "", &["raw_scores"], &["positive"], vec![]));
        initializer.push(float_tensor("one", &[1], vec![1.0]));
        nodes.push(node("Sub", "", &["one", "positive"], &["negative"], vec![]));
        nodes.push(node(
            "Concat",
            "",
            &["negative", "positive"],
            &[PROBABILITIES_OUTPUT],
            vec![attr_int("axis", 1)],
        ));
    } else {
        nodes.push(node(
            "Softmax",
            "",
            &["raw_scores"],
            &[PROBABILITIES_OUTPUT],
            vec![attr_int("axis", -1)],
        ));
    }
    let graph = GraphProto {
        name: "nurture_gbdt".to_owned(),
        node: nodes,
        initializer,
        input: vec![tensor_value(
            FEATURES_INPUT,
            DataType::Float,
            &[Dim::Dynamic("batch"), Dim::Fixed(width as i64)],
        )],
        output: vec![tensor_value(
            PROBABILITIES_OUTPUT,
            DataType::Float,
            &[Dim::Dynamic("batch"), Dim::Fixed(booster.classes as i64)],
        )],
        ..Default::default()
    };
    model(graph, producer_version, &[]).encode_to_vec()
}
