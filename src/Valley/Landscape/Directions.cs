using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using static TorchSharp.torch;

namespace Valley.Landscape;

/// <summary>How a random direction is scaled to the weights (Li et al. 2018; docs/design.md §6).</summary>
public enum DirectionNormalization
{
    /// <summary>Per filter / output neuron (slice along dim 0 of every tensor of rank ≥ 2): d_f ← d_f ‖w_f‖/(‖d_f‖ + 1e-10).</summary>
    Filter,
    /// <summary>Per tensor: d ← d ‖w‖/‖d‖.</summary>
    Layer,
    /// <summary>Whole vector: d ← d ‖w‖/‖d‖.</summary>
    Model,
    /// <summary>No scaling: the raw Gaussian direction.</summary>
    None,
}

/// <summary>A projection of checkpoints onto the top-2 principal directions of (w_t − w_final).</summary>
public sealed record TrajectoryPca(Tensor Direction1, Tensor Direction2, double[] ExplainedVariance, double[] X, double[] Y);

/// <summary>
/// Directions in weight space as flat vectors over all parameters (in <see cref="ParameterSet"/> order): random Gaussian
/// with filter/layer/model/no normalization, between models, top Hessian eigenvectors, PCA of a trajectory.
/// </summary>
public static class Directions
{
    /// <summary>
    /// A random N(0, I) direction, normalized. Tensors of rank ≤ 1 (biases, BatchNorm γ/β) get a zero direction by default
    /// ("ignore biasbn", as in every figure of Li et al.); with <paramref name="includeBiasBn"/> they get d = w, as Li's code does.
    /// </summary>
    public static Tensor Random(ParameterSet ps, DirectionNormalization normalization, bool includeBiasBn, long seed)
    {
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var d = randn(ps.Size, dtype: ScalarType.Float64, generator: g).to(ps.Device);
        return Normalize(ps, d, normalization, includeBiasBn).MoveToOuterDisposeScope();
    }

    /// <summary>Normalize a flat direction to the current weights (see <see cref="DirectionNormalization"/>).</summary>
    public static Tensor Normalize(ParameterSet ps, Tensor direction, DirectionNormalization normalization, bool includeBiasBn)
    {
        using var scope = NewDisposeScope();
        var d = direction.to(ScalarType.Float64).clone();
        var w = ps.GetFlat().to(ScalarType.Float64);
        if (normalization == DirectionNormalization.Model)
        {
            d = d * (w.norm() / (d.norm() + 1e-10));
        }
        var dv = ps.Unflatten(d);
        var wv = ps.Unflatten(w);
        using (no_grad())
            for (int i = 0; i < dv.Length; i++)
            {
                if (ps.Shapes[i].Length <= 1)
                {
                    if (includeBiasBn) dv[i].copy_(wv[i]); else dv[i].zero_();
                    continue;
                }
                if (normalization == DirectionNormalization.Filter)
                {
                    var d2 = dv[i].reshape(dv[i].shape[0], -1);
                    var w2 = wv[i].reshape(wv[i].shape[0], -1);
                    d2.mul_(w2.norm(1, keepdim: true) / (d2.norm(1, keepdim: true) + 1e-10));
                }
                else if (normalization == DirectionNormalization.Layer)
                    dv[i].mul_(wv[i].norm() / (dv[i].norm() + 1e-10));
            }
        return d.MoveToOuterDisposeScope();
    }

    /// <summary>The top-2 Hessian eigenvectors (unit norm) as directions.</summary>
    public static (Tensor, Tensor, double[] Eigenvalues) HessianEigenvectors(Objective objective, long seed, double tolerance = 1e-3)
    {
        var r = Lanczos.Compute(new HessianOperator(objective), new LanczosOptions { K = 2, Tolerance = tolerance, ReturnVectors = true, Seed = seed });
        return (r.Vectors![0].clone(), r.Vectors![1].clone(), r.Values);
    }

    /// <summary>
    /// PCA of (w_t − w_final) over checkpoints (Li et al. 2018 §7): the top two right singular vectors, the share of variance they
    /// explain, and each checkpoint's coordinates (w_t − w_final)·d.
    /// </summary>
    public static TrajectoryPca Pca(IReadOnlyList<Tensor> checkpoints, Tensor final)
    {
        if (checkpoints.Count < 2) throw new ValleyException("trajectory: at least two checkpoints are needed for a PCA");
        using var scope = NewDisposeScope();
        var M = stack(checkpoints.Select(c => (c - final).to(ScalarType.Float64)).ToArray());
        var (_, S, Vh) = linalg.svd(M, fullMatrices: false);
        var s2 = (S * S).data<double>().ToArray();
        double total = s2.Sum();
        var d1 = Vh[0].clone();
        var d2 = Vh.shape[0] > 1 ? Vh[1].clone() : zeros_like(d1);
        var x = M.matmul(d1).data<double>().ToArray();
        var y = M.matmul(d2).data<double>().ToArray();
        var explained = new[] { s2[0] / total, s2.Length > 1 ? s2[1] / total : 0 };
        return new TrajectoryPca(d1.MoveToOuterDisposeScope(), d2.MoveToOuterDisposeScope(), explained, x, y);
    }
}
