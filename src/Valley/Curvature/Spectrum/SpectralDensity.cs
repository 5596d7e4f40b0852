using System.Text.Json.Serialization;

namespace Valley.Curvature.Spectrum;

/// <summary>An estimate of the eigenvalue density φ(t) = (1/n) Σ δ(t − λᵢ) by <see cref="StochasticLanczosQuadrature"/>.</summary>
public sealed record SpectralDensity
{
    /// <summary>Quadrature nodes (Ritz values) of each run.</summary>
    public required double[][] Nodes { get; init; }

    /// <summary>Quadrature weights (squared first components of T's eigenvectors) of each run; each run's weights sum to 1.</summary>
    public required double[][] Weights { get; init; }

    /// <summary>Points t of the broadened density (not serialized; <see cref="StochasticLanczosQuadrature.Broaden"/> recomputes them from the nodes).</summary>
    [JsonIgnore] public double[] Grid { get; init; } = [];

    /// <summary>φ(t) on <see cref="Grid"/>, unit area (not serialized).</summary>
    [JsonIgnore] public double[] Density { get; init; } = [];

    /// <summary>The variance σ² of the Gaussian broadening used.</summary>
    public required double Sigma2 { get; init; }

    /// <summary>Lanczos runs (random start vectors).</summary>
    public required int Runs { get; init; }

    /// <summary>Lanczos steps per run.</summary>
    public required int Steps { get; init; }

    /// <summary>Operator-vector products asked for.</summary>
    public required long Products { get; init; }

    /// <summary>Wall-clock time.</summary>
    public required double Seconds { get; init; }

    /// <summary>Largest Ritz value over all runs (the λmax estimate; extreme Ritz values converge first).</summary>
    public double LambdaMax => Nodes.SelectMany(x => x).Max();

    /// <summary>Smallest Ritz value over all runs (the λmin estimate).</summary>
    public double LambdaMin => Nodes.SelectMany(x => x).Min();

    /// <summary>
    /// Estimated fraction of clearly negative eigenvalues: quadrature weight of nodes below −10⁻³·max|θ|. The threshold keeps
    /// the bulk of eigenvalues at zero, whose nodes land on either side of 0 by rounding, from counting as negative.
    /// </summary>
    public double NegativeMass => MassBelow(-1e-3 * Nodes.SelectMany(x => x).Max(Math.Abs));

    /// <summary>
    /// Standard error of <see cref="NegativeMass"/> over the runs: the sample standard deviation of each run's mass below
    /// the threshold over √runs (NaN with one run). One run's mass varies a lot: 29 % of the mean between runs of 50 steps
    /// on mlp:784-128-64-10 (docs/benchmarks.md, session 10).
    /// </summary>
    public double NegativeMassStandardError
    {
        get
        {
            if (Nodes.Length < 2) return double.NaN;
            double threshold = -1e-3 * Nodes.SelectMany(x => x).Max(Math.Abs);
            var each = Nodes.Select((nodes, r) => nodes.Select((t, i) => t < threshold ? Weights[r][i] : 0).Sum()).ToArray();
            double mean = each.Average();
            return Math.Sqrt(each.Sum(x => (x - mean) * (x - mean)) / (each.Length - 1) / each.Length);
        }
    }

    /// <summary>Quadrature weight of all nodes below zero (includes the rounding of the bulk at zero).</summary>
    public double NegativeMassRaw => MassBelow(0);

    double MassBelow(double threshold) => Nodes.Select((nodes, r) => nodes.Select((t, i) => t < threshold ? Weights[r][i] : 0).Sum()).Average();

    /// <summary>Estimated trace n·E[Σ wᵢθᵢ] from the first moment of each run.</summary>
    public required double Trace { get; init; }

    /// <summary>Standard error of <see cref="Trace"/> over the runs (NaN with one run).</summary>
    public required double TraceStandardError { get; init; }

    /// <summary>Second moment (1/n) tr(A²) estimate.</summary>
    public required double SecondMoment { get; init; }

    /// <summary>Standard error of <see cref="SecondMoment"/> over the runs (NaN with one run).</summary>
    public required double SecondMomentStandardError { get; init; }

    /// <summary>∫ φ(t) t^p dt of the broadened density on its grid (trapezoid rule); a check of the grid and normalization.</summary>
    public double GridMoment(int p)
    {
        double s = 0;
        for (int i = 1; i < Grid.Length; i++)
            s += 0.5 * (Density[i] * Math.Pow(Grid[i], p) + Density[i - 1] * Math.Pow(Grid[i - 1], p)) * (Grid[i] - Grid[i - 1]);
        return s;
    }
}
