namespace Valley.Landscape;

/// <summary>Which landscape a run computes (the subcommands of <c>valley landscape</c>).</summary>
public enum LandscapeMode
{
    /// <summary>A 1D slice along a random, normalized direction (Li et al. 2018).</summary>
    OneD,
    /// <summary>A 2D slice along two random, normalized directions.</summary>
    TwoD,
    /// <summary>The loss along the line between two models (Goodfellow et al. 2015), or the plane through three.</summary>
    Interpolate,
    /// <summary>The plane of the top-2 PCA directions of training checkpoints, with the trajectory projected onto it.</summary>
    Trajectory,
    /// <summary>The plane of the top-2 Hessian eigenvectors.</summary>
    Eigen,
}
