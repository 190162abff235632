//! One regression tree, grown leaf-wise on gradient histograms.

use super::binning::{BinnedMatrix, FeatureBins};

/// A tree node. Internal nodes send `x[feature] <= threshold` left.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Split feature (internal nodes).
    pub feature: usize,
    /// Split threshold (internal nodes): a training value, so that the f32
    /// comparison here and in ONNX Runtime agree exactly.
    pub threshold: f32,
    /// Left child (internal nodes).
    pub left: usize,
    /// Right child (internal nodes).
    pub right: usize,
    /// Output (leaves), already scaled by the learning rate.
    pub value: f32,
    /// Whether this is a leaf.
    pub leaf: bool,
}

/// A regression tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    /// Nodes.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf value a row reaches.
    pub fn predict(&self, row: &[f32]) -> f32 {
        let mut node = &self.nodes[0];
        while !node.leaf {
            node = if row[node.feature] <= node.threshold {
                &self.nodes[node.left]
            } else {
                &self.nodes[node.right]
            };
        }
        node.value
    }
}

/// Growth limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeParams {
    /// Most leaves per tree.
    pub max_leaves: usize,
    /// Fewest training rows in a leaf.
    pub min_samples_leaf: usize,
    /// L2 penalty on leaf values.
    pub l2: f64,
    /// Shrinkage applied to leaf values.
    pub learning_rate: f64,
}

/// Smallest hessian sum allowed in a child (as scikit-learn's
/// `min_hessian_to_split`).
const MIN_HESSIAN: f64 = 1e-3;

struct Histogram {
    gradient: Vec<f64>,
    hessian: Vec<f64>,
    count: Vec<u32>,
}

impl Histogram {
    fn zeros(size: usize) -> Self {
        Histogram {
            gradient: vec![0.0; size],
            hessian: vec![0.0; size],
            count: vec![0; size],
        }
    }

    fn subtract(&self, other: &Histogram) -> Histogram {
        Histogram {
            gradient: self
                .gradient
                .iter()
                .zip(&other.gradient)
                .map(|(a, b)| a - b)
                .collect(),
            hessian: self
                .hessian
                .iter()
                .zip(&other.hessian)
                .map(|(a, b)| a - b)
                .collect(),
            count: self
                .count
                .iter()
                .zip(&other.count)
                .map(|(a, b)| a - b)
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Split {
    gain: f64,
    feature: usize,
    bin: usize,
}

struct Leaf {
    node: usize,
    rows: Vec<u32>,
    histogram: Histogram,
    gradient: f64,
    hessian: f64,
    split: Option<Split>,
}

/// Grows one tree on the rows `rows` for gradients and hessians `g`, `h`.
/// Returns the tree and the split gain it adds per feature.
pub struct Grower<'a> {
    /// Binned features.
    pub matrix: &'a BinnedMatrix,
    /// Edges per feature.
    pub bins: &'a [FeatureBins],
    /// Limits.
    pub params: TreeParams,
    offsets: Vec<usize>,
    total_bins: usize,
}

impl<'a> Grower<'a> {
    /// A grower for one binned matrix.
    pub fn new(matrix: &'a BinnedMatrix, bins: &'a [FeatureBins], params: TreeParams) -> Self {
        let mut offsets = Vec::with_capacity(bins.len());
        let mut total_bins = 0;
        for feature in bins {
            offsets.push(total_bins);
            total_bins += feature.bins();
        }
        Grower {
            matrix,
            bins,
            params,
            offsets,
            total_bins,
        }
    }

    fn histogram(&self, rows: &[u32], g: &[f64], h: &[f64]) -> Histogram {
        let mut histogram = Histogram::zeros(self.total_bins);
        for (feature, column) in self.matrix.columns.iter().enumerate() {
            let offset = self.offsets[feature];
            for row in rows {
                let row = *row as usize;
                let slot = offset + column[row] as usize;
                histogram.gradient[slot] += g[row];
                histogram.hessian[slot] += h[row];
                histogram.count[slot] += 1;
            }
        }
        histogram
    }

    fn score(&self, gradient: f64, hessian: f64) -> f64 {
        gradient * gradient / (hessian + self.params.l2)
    }

    fn best_split(
        &self,
        histogram: &Histogram,
        gradient: f64,
        hessian: f64,
        count: usize,
    ) -> Option<Split> {
        let min_leaf = self.params.min_samples_leaf;
        if count < 2 * min_leaf {
            return None;
        }
        let parent = self.score(gradient, hessian);
        let mut best: Option<Split> = None;
        for (feature, bins) in self.bins.iter().enumerate() {
            let offset = self.offsets[feature];
            let (mut gl, mut hl, mut cl) = (0.0, 0.0, 0usize);
            for bin in 0..bins.bins() - 1 {
                gl += histogram.gradient[offset + bin];
                hl += histogram.hessian[offset + bin];
                cl += histogram.count[offset + bin] as usize;
                let cr = count - cl;
                if cl < min_leaf {
                    continue;
                }
                if cr < min_leaf {
                    break;
                }
                let (gr, hr) = (gradient - gl, hessian - hl);
                if hl < MIN_HESSIAN || hr < MIN_HESSIAN {
                    continue;
                }
                let gain = self.score(gl, hl) + self.score(gr, hr) - parent;
                if gain > 1e-12 && best.is_none_or(|b| gain > b.gain) {
                    best = Some(Split { gain, feature, bin });
                }
            }
        }
        best
    }

    fn leaf_value(&self, gradient: f64, hessian: f64) -> f32 {
        (-self.params.learning_rate * gradient / (hessian + self.params.l2)) as f32
    }

    /// Grows a tree.
    pub fn grow(&self, rows: Vec<u32>, g: &[f64], h: &[f64], gains: &mut [f64]) -> Tree {
        let histogram = self.histogram(&rows, g, h);
        let gradient: f64 = rows.iter().map(|r| g[*r as usize]).sum();
        let hessian: f64 = rows.iter().map(|r| h[*r as usize]).sum();
        let split = self.best_split(&histogram, gradient, hessian, rows.len());
        let mut nodes = vec![Node {
            feature: 0,
            threshold: 0.0,
            left: 0,
            right: 0,
            value: 0.0,
            leaf: true,
        }];
        let mut leaves = vec![Leaf {
            node: 0,
            rows,
            histogram,
            gradient,
            hessian,
            split,
        }];
        let mut finished: Vec<Leaf> = Vec::new();

        while leaves.len() + finished.len() < self.params.max_leaves {
            // The open leaf with the best split (first on ties).
            let Some(best) = (0..leaves.len())
                .filter(|i| leaves[*i].split.is_some())
                .max_by(|a, b| {
                    let (ga, gb) = (
                        leaves[*a].split.map_or(0.0, |s| s.gain),
                        leaves[*b].split.map_or(0.0, |s| s.gain),
                    );
                    ga.total_cmp(&gb).then(b.cmp(a))
                })
            else {
                break;
            };
            let leaf = leaves.swap_remove(best);
            let split = leaf.split.expect("filtered on splits");
            gains[split.feature] += split.gain;
            let column = &self.matrix.columns[split.feature];
            let (left_rows, right_rows): (Vec<u32>, Vec<u32>) = leaf
                .rows
                .iter()
                .partition(|row| (column[**row as usize] as usize) <= split.bin);
            let small_is_left = left_rows.len() <= right_rows.len();
            let small = self.histogram(
                if small_is_left {
                    &left_rows
                } else {
                    &right_rows
                },
                g,
                h,
            );
            let large = leaf.histogram.subtract(&small);
            let (left_hist, right_hist) = if small_is_left {
                (small, large)
            } else {
                (large, small)
            };

            let left_node = nodes.len();
            let right_node = left_node + 1;
            nodes[leaf.node] = Node {
                feature: split.feature,
                threshold: self.bins[split.feature].edges[split.bin],
                left: left_node,
                right: right_node,
                value: 0.0,
                leaf: false,
            };
            nodes.push(Node {
                feature: 0,
                threshold: 0.0,
                left: 0,
                right: 0,
                value: 0.0,
                leaf: true,
            });
            nodes.push(Node {
                feature: 0,
                threshold: 0.0,
                left: 0,
                right: 0,
                value: 0.0,
                leaf: true,
            });
            for (node, rows, histogram) in [
                (left_node, left_rows, left_hist),
                (right_node, right_rows, right_hist),
            ] {
                let gradient: f64 = rows.iter().map(|r| g[*r as usize]).sum();
                let hessian: f64 = rows.iter().map(|r| h[*r as usize]).sum();
                let split = self.best_split(&histogram, gradient, hessian, rows.len());
                leaves.push(Leaf {
                    node,
                    rows,
                    histogram,
                    gradient,
                    hessian,
                    split,
                });
            }
            // Leaves that cannot split are done; keep them out of the search.
            let (open, closed): (Vec<Leaf>, Vec<Leaf>) =
                leaves.into_iter().partition(|l| l.split.is_some());
            leaves = open;
            finished.extend(closed);
        }
        for leaf in leaves.iter().chain(&finished) {
            nodes[leaf.node].value = self.leaf_value(leaf.gradient, leaf.hessian);
        }
        Tree { nodes }
    }
}
