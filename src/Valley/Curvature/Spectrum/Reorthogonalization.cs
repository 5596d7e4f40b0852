using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// Full reorthogonalization as both Lanczos implementations (<see cref="BlockLanczosProcess"/> and the lockstep runs of
/// <see cref="StochasticLanczosQuadrature"/>) do it: classical Gram-Schmidt against the whole basis, repeated once when the
/// DGKS criterion (Daniel, Gragg, Kaufman, Stewart 1976) says so. A pass that leaves less than 1/√2 of a vector's norm
/// removed most of it, and rounding can then leave a component in the basis of about ε times the removed part; a second
/// pass removes it, and two passes are enough (Giraud, Langou, Rozložník 2005, "twice is enough").
/// </summary>
internal static class Reorthogonalization
{
    /// <summary>η = 1/√2 of the DGKS criterion.</summary>
    const double Eta = 0.70710678118654752;

    /// <summary>
    /// Orthogonalizes rows <paramref name="w"/> (shape [.., n]) against a basis, one or two classical Gram-Schmidt passes.
    /// </summary>
    /// <param name="removeProjection">One pass: the rows minus their projection onto the basis (and onto any locked vectors).</param>
    /// <returns>The orthogonalized rows and their norms (shape of <paramref name="w"/> without its last dimension).</returns>
    public static (Tensor Rows, Tensor Norms) Dgks(Tensor w, Func<Tensor, Tensor> removeProjection)
    {
        var before = w.norm(-1);
        for (int pass = 0; pass < 2; pass++)
        {
            w = removeProjection(w);
            var after = w.norm(-1);
            bool again = (after < before * Eta).any().ToBoolean();
            before = after;
            if (!again) break;
        }
        return (w, before);
    }

    /// <summary>
    /// <see cref="Dgks(Tensor, Func{Tensor, Tensor})"/> after a first pass made by the caller: <paramref name="w"/> is what
    /// that pass left of rows whose norms were <paramref name="normsBefore"/>; a second pass only when DGKS asks for it.
    /// </summary>
    public static (Tensor Rows, Tensor Norms) Dgks(Tensor w, Func<Tensor, Tensor> removeProjection, Tensor normsBefore)
    {
        var after = w.norm(-1);
        if (!(after < normsBefore * Eta).any().ToBoolean()) return (w, after);
        w = removeProjection(w);
        return (w, w.norm(-1));
    }
}
