//! Feature binning: each column is cut into at most `max_bins` bins whose
//! upper edges are values seen in the training data, so a split "bin <= b"
//! is exactly the float comparison "x <= edge[b]" that ONNX Runtime's
//! `BRANCH_LEQ` nodes make.

/// Bin edges of one feature.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureBins {
    /// Ascending upper edges; a value `x` falls into the first bin `b` with
    /// `x <= edges[b]`, or into bin `edges.len()` when larger than all.
    pub edges: Vec<f32>,
}

impl FeatureBins {
    /// Learns edges from a column's values.
    pub fn fit(values: &[f32], max_bins: usize) -> Self {
        let mut sorted: Vec<f32> = values.to_vec();
        sorted.sort_by(f32::total_cmp);
        let mut distinct = sorted.clone();
        distinct.dedup();
        let edges = if distinct.len() <= max_bins {
            // One bin per distinct value; the last needs no edge.
            distinct[..distinct.len().saturating_sub(1)].to_vec()
        } else {
            let mut edges: Vec<f32> = (1..max_bins)
                .map(|k| sorted[k * sorted.len() / max_bins])
                .collect();
            edges.dedup();
            // The largest value needs no edge.
            if edges.last() == sorted.last() {
                edges.pop();
            }
            edges
        };
        FeatureBins { edges }
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.edges.len() + 1
    }

    /// Bin of a value.
    pub fn bin(&self, value: f32) -> u8 {
        self.edges.partition_point(|edge| *edge < value) as u8
    }
}

/// A column-major matrix of bin indices.
#[derive(Debug, Clone)]
pub struct BinnedMatrix {
    /// `columns[feature][row]`.
    pub columns: Vec<Vec<u8>>,
    /// Rows.
    pub rows: usize,
}

impl BinnedMatrix {
    /// Bins a row-major matrix.
    pub fn new(values: &[f32], width: usize, bins: &[FeatureBins]) -> Self {
        let rows = values.len() / width.max(1);
        let columns = (0..width)
            .map(|feature| {
                (0..rows)
                    .map(|row| bins[feature].bin(values[row * width + feature]))
                    .collect()
            })
            .collect();
        BinnedMatrix { columns, rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_distinct_values_get_a_bin_each() {
        let bins = FeatureBins::fit(&[3.0, 1.0, 2.0, 1.0, 3.0], 255);
        assert_eq!(bins.edges, vec![1.0, 2.0]);
        assert_eq!(
            [
                bins.bin(0.5),
                bins.bin(1.0),
                bins.bin(1.5),
                bins.bin(2.0),
                bins.bin(9.0)
            ],
            [0, 0, 1, 1, 2]
        );
    }

    #[test]
    fn many_values_are_cut_at_quantiles() {
        let values: Vec<f32> = (0..10_000).map(|v| v as f32).collect();
        let bins = FeatureBins::fit(&values, 255);
        assert!(bins.bins() <= 255 && bins.bins() > 200, "{}", bins.bins());
        assert!(bins.edges.windows(2).all(|w| w[0] < w[1]));
        // bin <= b  <=>  x <= edges[b]
        for x in [0.0_f32, 17.0, 5_000.5, 9_999.0] {
            let b = bins.bin(x) as usize;
            if b < bins.edges.len() {
                assert!(x <= bins.edges[b]);
            }
            if b > 0 {
                assert!(x > bins.edges[b - 1]);
            }
        }
    }
}
