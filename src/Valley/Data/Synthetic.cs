using static TorchSharp.torch;

namespace Valley.Data;

/// <summary>Seeded synthetic data sets for tests and examples.</summary>
public static class Synthetic
{
    /// <summary>
    /// A mixture of <paramref name="classes"/> isotropic Gaussians in <paramref name="dim"/> dimensions,
    /// means drawn from N(0, separation² I), unit variance around each mean; balanced labels.
    /// </summary>
    public static Dataset GaussianMixture(long n, int dim, int classes, long seed, double separation = 3.0)
    {
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var means = randn([classes, dim], generator: g) * separation;
        var y = arange(n) % classes;
        y = y.index_select(0, randperm(n, generator: g));
        var x = means.index_select(0, y) + randn([n, dim], generator: g);
        return new Dataset($"gaussian-mixture(n={n}, d={dim}, k={classes}, seed={seed})",
            x.MoveToOuterDisposeScope(), y.MoveToOuterDisposeScope(), TaskKind.Classification, classes);
    }

    /// <summary>
    /// Teacher-student regression: x ~ N(0, I), y = x·w* + noise·N(0,1) with w* ~ N(0, I/dim).
    /// </summary>
    public static Dataset LinearTeacher(long n, int dim, long seed, double noise = 0.1)
    {
        using var scope = NewDisposeScope();
        var g = new Generator((ulong)seed);
        var w = randn([dim], generator: g) / Math.Sqrt(dim);
        var x = randn([n, dim], generator: g);
        var y = x.matmul(w) + noise * randn([n], generator: g);
        return new Dataset($"linear-teacher(n={n}, d={dim}, seed={seed})",
            x.MoveToOuterDisposeScope(), y.MoveToOuterDisposeScope(), TaskKind.Regression, 1);
    }
}
