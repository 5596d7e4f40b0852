namespace Valley.Sharpness;

/// <summary>
/// The scale search of Jiang et al. (2020, Appendix C; Dziugaite et al. 2020 for the magnitude-aware variants): bisection on
/// [0, <see cref="Upper"/>] for at most <see cref="Depth"/> steps; at each scale the training accuracy drop is measured; the
/// search stops when it is within <see cref="Tolerance"/> of <see cref="TargetDrop"/>, else it moves the upper bound down (drop
/// too large) or the lower bound up. Defaults are the paper's.
/// </summary>
public record FlatnessSearchOptions
{
    /// <summary>The accuracy drop the scale is searched for (default 0.1).</summary>
    public double TargetDrop { get; init; } = 0.1;

    /// <summary>How close to the target the drop must come to stop early (default 0.01).</summary>
    public double Tolerance { get; init; } = 0.01;

    /// <summary>Bisection steps at most (default 15).</summary>
    public int Depth { get; init; } = 15;

    /// <summary>Upper end of the searched interval (default 2).</summary>
    public double Upper { get; init; } = 2.0;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first bad option.</summary>
    public virtual void Validate()
    {
        Check.Between(TargetDrop, 0, 1, nameof(TargetDrop));
        Check.PositiveFinite(Tolerance, nameof(Tolerance));
        Check.AtLeast(Depth, 1, nameof(Depth));
        Check.PositiveFinite(Upper, nameof(Upper));
    }
}

/// <summary>The bisection shared by <see cref="PacBayesFlatness"/> (σ) and <see cref="WorstCaseFlatness"/> (α).</summary>
public static class FlatnessSearch
{
    /// <summary>
    /// The scale at which <paramref name="drop"/>(scale) reaches <see cref="FlatnessSearchOptions.TargetDrop"/>, as in
    /// Jiang et al. (2020), and the number of scales evaluated.
    /// </summary>
    public static (double Scale, int Evaluations) Bisect(Func<double, double> drop, FlatnessSearchOptions options)
    {
        double lo = 0, hi = options.Upper, s = hi / 2;
        int evals = 0;
        for (int i = 0; i < options.Depth; i++)
        {
            s = (lo + hi) / 2;
            double d = drop(s);
            evals++;
            if (Math.Abs(d - options.TargetDrop) < options.Tolerance) break;
            if (d > options.TargetDrop) hi = s; else lo = s;
        }
        return (s, evals);
    }
}
