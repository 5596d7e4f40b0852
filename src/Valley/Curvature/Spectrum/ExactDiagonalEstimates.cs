using TorchSharp;
using System.Diagnostics;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// The trace and the diagonal of an <see cref="IExactDiagonal"/> operator as estimate records (standard errors 0, no
/// products, method "exact"): what <see cref="TraceMethod.Auto"/> and <see cref="DiagonalMethod.Auto"/> return when the
/// operator can give its diagonal.
/// </summary>
internal static class ExactDiagonalEstimates
{
    /// <summary>The method name the records carry.</summary>
    public const string Method = "exact";

    /// <summary>tr(A) = Σ diag(A), or null when the operator cannot give its diagonal.</summary>
    public static TraceEstimate? TryTrace(ICurvatureOperator op, CancellationToken ct = default) =>
        TryDiagonal(op, ct) is { } d
            ? new TraceEstimate { Method = Method, Trace = d.Diagonal.Sum(), StandardError = 0, Probes = 0, Products = 0, Converged = true, Seconds = d.Seconds }
            : null;

    /// <summary>diag(A), or null when the operator cannot give it.</summary>
    public static DiagonalEstimate? TryDiagonal(ICurvatureOperator op, CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        if (op is not IExactDiagonal exact) return null;
        using var scope = NewDisposeScope();
        if (exact.ExactDiagonal(ct) is not { } d) return null;
        var values = d.cpu().data<double>().ToArray();
        return new DiagonalEstimate { Method = Method, Diagonal = values, StandardErrors = new double[values.Length], Probes = 0, Products = 0, Seconds = sw.Elapsed.TotalSeconds };
    }
}
