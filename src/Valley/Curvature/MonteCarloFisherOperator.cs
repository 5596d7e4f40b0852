using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>
/// The Monte-Carlo Fisher F̃ = (1/N) Σ_i (1/S) Σ_s J_iᵀ g_is g_isᵀ J_i with g_is the gradient with respect to the outputs
/// of the negative log-likelihood of a label ŷ_is drawn from the model's own predictive distribution (Martens 2020 §9.2):
/// categorical for cross-entropy, Gaussian N(f, ½ I) for MSE, Bernoulli for BCE, scaled so that E[g gᵀ] is the loss's
/// output Hessian. Its expectation is the Fisher, which for these losses equals the <see cref="GgnOperator"/>. The labels
/// are drawn for each product from variates keyed by (seed, example index, sample) (<see cref="ExampleUniforms"/>), so every
/// product is of the same matrix, whatever the batch size and the number of ranks. Refused for other losses (no predictive
/// distribution).
/// </summary>
public sealed class MonteCarloFisherOperator : ObjectiveOperator
{
    /// <summary>Labels sampled per example S (at least 1).</summary>
    public int Samples { get; }

    /// <summary>Seed of the sampled labels.</summary>
    public long Seed { get; }

    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    /// <param name="samples">Labels sampled per example (curvlinops's default: 1).</param>
    /// <param name="seed">Seed of the labels.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="samples"/> is below 1, or the objective is in train mode and its model has BatchNorm layers.</exception>
    public MonteCarloFisherOperator(Objective objective, int samples = 1, long seed = 0) : base(objective)
    {
        Check.AtLeast(samples, 1, nameof(samples));
        PerExampleCurvature.RequireIndependentExamples(objective, "the Monte-Carlo Fisher");
        if (OutputPasses.KindOf(objective.Loss) == OutputLossKind.Other)
            throw new ValleyException("the Monte-Carlo Fisher needs the model's predictive distribution, known for the cross-entropy, mse and bce losses only");
        Samples = samples;
        Seed = seed;
        _uniforms = new ExampleUniforms(objective, seed);
    }

    readonly ExampleUniforms _uniforms;

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v) => ApplyAsBlock(v);

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V) =>
        GaussNewtonProduct.Block(Objective, V, Cancellation, (batch, index) =>
        {
            var g = batch.SampledGradients(_uniforms.For(batch, index, Samples)); // [S, B, C]
            return w => (g * (g * w.unsqueeze(0)).sum(2, keepdim: true)).sum(0L) / Samples;
        });
}
