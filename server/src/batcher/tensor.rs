//! Named tensors of any supported element type, for generic models: built
//! from requests, concatenated into one batch along the first dimension,
//! run in ONNX Runtime, and split back per request.

use std::borrow::Cow;

use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::error::ServeError;

/// Elements of a tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// float32.
    F32(Vec<f32>),
    /// float64.
    F64(Vec<f64>),
    /// int32.
    I32(Vec<i32>),
    /// int64.
    I64(Vec<i64>),
    /// bool.
    Bool(Vec<bool>),
    /// UTF-8 strings.
    Str(Vec<String>),
}

macro_rules! each {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::Bool($v) => $body,
            TensorData::Str($v) => $body,
        }
    };
}

impl TensorData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Same element type as `other`.
    pub fn same_type(&self, other: &TensorData) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    fn extend(&mut self, other: &TensorData) -> Result<(), ServeError> {
        match (self, other) {
            (TensorData::F32(a), TensorData::F32(b)) => a.extend_from_slice(b),
            (TensorData::F64(a), TensorData::F64(b)) => a.extend_from_slice(b),
            (TensorData::I32(a), TensorData::I32(b)) => a.extend_from_slice(b),
            (TensorData::I64(a), TensorData::I64(b)) => a.extend_from_slice(b),
            (TensorData::Bool(a), TensorData::Bool(b)) => a.extend_from_slice(b),
            (TensorData::Str(a), TensorData::Str(b)) => a.extend_from_slice(b),
            _ => {
                return Err(ServeError::Inference(
                    "mixed element types in one batch; this is a bug".to_owned(),
                ));
            }
        }
        Ok(())
    }

    fn slice(&self, start: usize, end: usize) -> TensorData {
        match self {
            TensorData::F32(v) => TensorData::F32(v[start..end].to_vec()),
            TensorData::F64(v) => TensorData::F64(v[start..end].to_vec()),
            TensorData::I32(v) => TensorData::I32(v[start..end].to_vec()),
            TensorData::I64(v) => TensorData::I64(v[start..end].to_vec()),
            TensorData::Bool(v) => TensorData::Bool(v[start..end].to_vec()),
            TensorData::Str(v) => TensorData::Str(v[start..end].to_vec()),
        }
    }
}

/// A named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Graph input or output name.
    pub name: String,
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: TensorData,
}

impl NamedTensor {
    /// Rows along the first dimension (1 for a scalar).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
}

/// Concatenates each input of `requests` along the first dimension.
pub fn concat(requests: &[&[NamedTensor]]) -> Result<Vec<NamedTensor>, ServeError> {
    let mut merged: Vec<NamedTensor> = requests[0].to_vec();
    for request in &requests[1..] {
        for (into, tensor) in merged.iter_mut().zip(request.iter()) {
            if into.name != tensor.name
                || into.shape[1..] != tensor.shape[1..]
                || !into.data.same_type(&tensor.data)
            {
                return Err(ServeError::Inference(
                    "incompatible tensors in one batch; this is a bug".to_owned(),
                ));
            }
            into.data.extend(&tensor.data)?;
            into.shape[0] += tensor.shape[0];
        }
    }
    Ok(merged)
}

/// Splits outputs computed for `rows` requests' rows back per request.
pub fn split(
    outputs: Vec<NamedTensor>,
    rows: &[usize],
) -> Result<Vec<Vec<NamedTensor>>, ServeError> {
    let total: usize = rows.iter().sum();
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_request: Vec<Vec<NamedTensor>> = rows.iter().map(|_| Vec::new()).collect();
    for output in outputs {
        if output.shape.first().copied() != Some(total) {
            return Err(ServeError::Inference(format!(
                "output {:?} has shape {:?}, which does not follow the batch of {total} rows",
                output.name, output.shape
            )));
        }
        let inner: usize = output.shape[1..].iter().product();
        let mut offset = 0;
        for (request, count) in rows.iter().enumerate() {
            let mut shape = output.shape.clone();
            shape[0] = *count;
            per_request[request].push(NamedTensor {
                name: output.name.clone(),
                shape,
                data: output.data.slice(offset * inner, (offset + count) * inner),
            });
            offset += count;
        }
    }
    Ok(per_request)
}

fn to_value(tensor: NamedTensor) -> Result<SessionInputValue<'static>, ort::Error> {
    let shape: Vec<usize> = tensor.shape;
    Ok(match tensor.data {
        TensorData::F32(v) => Tensor::from_array((shape, v))?.into_dyn().into(),
        TensorData::F64(v) => Tensor::from_array((shape, v))?.into_dyn().into(),
        TensorData::I32(v) => Tensor::from_array((shape, v))?.into_dyn().into(),
        TensorData::I64(v) => Tensor::from_array((shape, v))?.into_dyn().into(),
        TensorData::Bool(v) => Tensor::from_array((shape, v))?.into_dyn().into(),
        TensorData::Str(v) => Tensor::from_string_array((shape, v.as_slice()))?
            .into_dyn()
            .into(),
    })
}

fn from_value(name: &str, value: &DynValue) -> Result<NamedTensor, ort::Error> {
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(ort::Error::new(format!("output {name:?} is not a tensor")));
    };
    macro_rules! primitive {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (
                shape.iter().map(|d| *d as usize).collect::<Vec<_>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => primitive!(f32, F32),
        TensorElementType::Float64 => primitive!(f64, F64),
        TensorElementType::Int32 => primitive!(i32, I32),
        TensorElementType::Int64 => primitive!(i64, I64),
        TensorElementType::Bool => primitive!(bool, Bool),
        TensorElementType::String => {
            let (shape, data) = value.try_extract_strings()?;
            (
                shape.iter().map(|d| *d as usize).collect(),
                TensorData::Str(data),
            )
        }
        other => {
            return Err(ort::Error::new(format!(
                "output {name:?} has unsupported type {other:?}"
            )));
        }
    };
    Ok(NamedTensor {
        name: name.to_owned(),
        shape,
        data,
    })
}

/// Runs the session on named inputs and returns every output.
pub fn run(
    session: &mut Session,
    inputs: Vec<NamedTensor>,
) -> Result<Vec<NamedTensor>, ServeError> {
    let failed = |error: ort::Error| ServeError::Inference(error.to_string());
    let mut values: Vec<(Cow<'static, str>, SessionInputValue<'static>)> =
        Vec::with_capacity(inputs.len());
    for tensor in inputs {
        let name = Cow::Owned(tensor.name.clone());
        values.push((name, to_value(tensor).map_err(failed)?));
    }
    let outputs = session.run(values).map_err(failed)?;
    outputs
        .iter()
        .map(|(name, value)| from_value(name, &value).map_err(failed))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(rows: usize, values: Vec<f32>) -> NamedTensor {
        NamedTensor {
            name: "x".into(),
            shape: vec![rows, 2],
            data: TensorData::F32(values),
        }
    }

    #[test]
    fn concat_then_split_round_trips() {
        let a = [tensor(1, vec![1.0, 2.0])];
        let b = [tensor(2, vec![3.0, 4.0, 5.0, 6.0])];
        let merged = concat(&[&a, &b]).unwrap();
        assert_eq!(merged[0].shape, vec![3, 2]);
        let parts = split(merged, &[1, 2]).unwrap();
        assert_eq!(parts[0][0], a[0]);
        assert_eq!(parts[1][0], b[0]);
    }

    #[test]
    fn outputs_that_lose_the_batch_dimension_cannot_be_split() {
        let reduced = NamedTensor {
            name: "sum".into(),
            shape: vec![1],
            data: TensorData::F32(vec![21.0]),
        };
        assert!(split(vec![reduced], &[1, 2]).is_err());
    }
}
