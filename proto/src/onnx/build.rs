//! Small constructors for ONNX messages, so that graph writers (the trainer,
//! test fixtures) read as graphs rather than as protobuf plumbing.

use super::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_proto::DataType, tensor_shape_proto::Dimension, tensor_shape_proto::dimension,
    type_proto,
};

/// ONNX IR version written (ONNX 1.14+, read by ONNX Runtime 1.31).
pub const IR_VERSION: i64 = 9;
/// Default-domain opset written.
pub const DEFAULT_OPSET: i64 = 17;
/// `ai.onnx.ml` opset written (TreeEnsemble*, LinearClassifier, ...).
pub const ML_OPSET: i64 = 3;

/// One dimension of a value's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named dynamic size (e.g. the batch).
    Dynamic(&'static str),
}

/// A graph input or output of tensor type.
pub fn tensor_value(name: &str, elem_type: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n),
                Dim::Dynamic(param) => dimension::Value::DimParam((*param).to_owned()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem_type as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// A float32 initializer.
pub fn float_tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        float_data: values,
        ..Default::default()
    }
}

/// An int64 initializer.
pub fn int64_tensor(name: &str, dims: &[i64], values: Vec<i64>) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        int64_data: values,
        ..Default::default()
    }
}

/// A node in the default domain (`domain` empty) or another one.
pub fn node(
    op_type: &str,
    domain: &str,
    inputs: &[&str],
    outputs: &[&str],
    attributes: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: op_type.to_owned(),
        domain: domain.to_owned(),
        name: format!("{op_type}_{}", outputs.first().copied().unwrap_or("out")),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        attribute: attributes,
        doc_string: String::new(),
    }
}

fn attribute(name: &str, r#type: AttributeType) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: r#type as i32,
        ..Default::default()
    }
}

/// An integer attribute.
pub fn attr_int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        i: value,
        ..attribute(name, AttributeType::Int)
    }
}

/// A float attribute.
pub fn attr_float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        f: value,
        ..attribute(name, AttributeType::Float)
    }
}

/// A string attribute.
pub fn attr_string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        s: value.as_bytes().to_vec(),
        ..attribute(name, AttributeType::String)
    }
}

/// An integer-list attribute.
pub fn attr_ints(name: &str, values: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints: values,
        ..attribute(name, AttributeType::Ints)
    }
}

/// A float-list attribute.
pub fn attr_floats(name: &str, values: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats: values,
        ..attribute(name, AttributeType::Floats)
    }
}

/// A string-list attribute.
pub fn attr_strings<S: AsRef<str>>(name: &str, values: &[S]) -> AttributeProto {
    AttributeProto {
        strings: values
            .iter()
            .map(|s| s.as_ref().as_bytes().to_vec())
            .collect(),
        ..attribute(name, AttributeType::Strings)
    }
}

/// A model around `graph`, importing the default and `ai.onnx.ml` opsets
/// plus any `(domain, version)` pairs in `extra_opsets`.
pub fn model(
    graph: GraphProto,
    producer_version: &str,
    extra_opsets: &[(&str, i64)],
) -> ModelProto {
    let mut opset_import = vec![
        OperatorSetIdProto {
            domain: String::new(),
            version: DEFAULT_OPSET,
        },
        OperatorSetIdProto {
            domain: "ai.onnx.ml".to_owned(),
            version: ML_OPSET,
        },
    ];
    opset_import.extend(
        extra_opsets
            .iter()
            .map(|(domain, version)| OperatorSetIdProto {
                domain: (*domain).to_owned(),
                version: *version,
            }),
    );
    ModelProto {
        ir_version: IR_VERSION,
        producer_name: "nurture".to_owned(),
        producer_version: producer_version.to_owned(),
        graph: Some(graph),
        opset_import,
        ..Default::default()
    }
}
