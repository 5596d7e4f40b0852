using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Sharpness;

/// <summary>
/// The σ search of Jiang et al. (2020) / Dziugaite et al. (2020) (DESIGN.md §5.5–6): bisection on [0, 2], depth 15; at each σ
/// the accuracy drop from the unperturbed training accuracy is measured; stop when it is within <see cref="Tolerance"/> of
/// <see cref="TargetDrop"/>, else move the upper bound down (drop too large) or the lower bound up.
/// </summary>
public sealed record FlatnessSearchOptions
{
    public double TargetDrop { get; init; } = 0.1;
    public double Tolerance { get; init; } = 0.01;
    public int Depth { get; init; } = 15;
    public double Upper { get; init; } = 2.0;
    /// <summary>Monte-Carlo samples per σ (PAC-Bayes).</summary>
    public int Samples { get; init; } = 10;
    /// <summary>Magnitude-aware ε: noise std sqrt(σ² w_i² + ε²), box α|w_i| + ε.</summary>
    public double MagnitudeEpsilon { get; init; } = 1e-3;
    /// <summary>Projected ascent steps per α (worst-case flatness).</summary>
    public int AscentSteps { get; init; } = 20;
    public long Seed { get; init; }

    public void Validate()
    {
        if (!(TargetDrop > 0 && TargetDrop < 1)) throw new ValleyException($"flatness: the target accuracy drop must be in (0, 1), got {TargetDrop}");
        if (!(Tolerance > 0) || !double.IsFinite(Tolerance)) throw new ValleyException($"flatness: the tolerance must be positive, got {Tolerance}");
        if (Depth < 1 || Samples < 1 || AscentSteps < 1) throw new ValleyException("flatness: depth, samples and ascent steps must be at least 1");
    }
}

public static class FlatnessSearch
{
    /// <summary>Bisection for the scale at which <paramref name="drop"/>(scale) reaches the target, as in Jiang et al.</summary>
    public static (double Scale, int Evaluations) Bisect(Func<double, double> drop, FlatnessSearchOptions o)
    {
        double lo = 0, hi = o.Upper, s = hi / 2;
        int evals = 0;
        for (int i = 0; i < o.Depth; i++)
        {
            s = (lo + hi) / 2;
            double d = drop(s);
            evals++;
            if (Math.Abs(d - o.TargetDrop) < o.Tolerance) break;
            if (d > o.TargetDrop) hi = s; else lo = s;
        }
        return (s, evals);
    }

    /// <summary>Parameters the norms of the PAC-Bayes bounds run over: weight tensors of rank ≥ 2 (Jiang et al. leave out biases and BatchNorm).</summary>
    static Tensor WeightsOnly(ParameterSet ps, Tensor flat)
    {
        var views = ps.Unflatten(flat);
        return cat(views.Where((v, i) => ps.Tensors[i].dim() >= 2).Select(v => v.reshape(-1)).ToArray());
    }

    /// <summary>
    /// PAC-Bayes flatness and bounds (Jiang et al. 2020, measures 48–61): σ from the search with noise N(0, σ²I) (σ is the standard
    /// deviation; a known port passes σ² as the standard deviation), then flatness = 1/σ², orig = ‖w‖²/(4σ²) + log(m/σ) + 10,
    /// init the same with w − w₀. Magnitude-aware: σ' with noise std sqrt(σ'² w_i² + ε²); mag.flatness = 1/σ'²,
    /// mag.orig/init = ¼ Σ_i log((ε² + (σ'² + 1)‖r‖²/ω) / (ε² + σ'² (w_i − w₀_i)²)) + log(m/σ') + 10 with r = w or w − w₀.
    /// Norms over weight tensors (ω of them); m = training examples. Without w₀ the init measures are omitted.
    /// </summary>
    public static SharpnessResult[] PacBayes(Objective objective, Tensor? initialWeights, FlatnessSearchOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new FlatnessSearchOptions();
        o.Validate();
        using var probe = new PerturbationProbe(objective);
        var acc0 = probe.EvaluateAt(null, ct: ct).Accuracy ?? throw new ValleyException("PAC-Bayes flatness needs a classification data set (accuracy)");
        long m = objective.Examples;
        var results = new List<SharpnessResult>();
        foreach (bool magnitude in new[] { false, true })
        {
            var gen = new Generator((ulong)(10348628753 + o.Seed));
            double Drop(double sigma)
            {
                double accSum = 0;
                for (int s = 0; s < o.Samples; s++)
                {
                    using var scope = NewDisposeScope();
                    var z = randn(probe.Origin.shape, dtype: ScalarType.Float64, generator: gen);
                    var std = magnitude ? (sigma * sigma * probe.Origin.pow(2) + o.MagnitudeEpsilon * o.MagnitudeEpsilon).sqrt() : full_like(probe.Origin, sigma);
                    accSum += probe.EvaluateAt(std * z, ct: ct).Accuracy!.Value;
                }
                return Math.Abs(accSum / o.Samples - acc0);
            }
            var (sigma, evals) = Bisect(Drop, o);
            using var scope2 = NewDisposeScope();
            var w = WeightsOnly(objective.Parameters, probe.Origin);
            var w0 = initialWeights is null ? null : WeightsOnly(objective.Parameters, initialWeights.to(ScalarType.Float64));
            var details = new Dictionary<string, double> { ["sigma"] = sigma, ["train_accuracy"] = acc0, ["examples"] = m };
            string prefix = magnitude ? "pacbayes-mag" : "pacbayes";
            var common = new Dictionary<string, double> { ["target_drop"] = o.TargetDrop, ["tolerance"] = o.Tolerance, ["depth"] = o.Depth, ["samples"] = o.Samples };
            if (magnitude) common["epsilon"] = o.MagnitudeEpsilon;
            double omega = w.shape[0];
            double Bound(Tensor reference)
            {
                if (!magnitude) return reference.pow(2).sum().ToDouble() / (4 * sigma * sigma) + Math.Log(m / sigma) + 10;
                var dist = w0 is null ? w : w - w0;
                var num = o.MagnitudeEpsilon * o.MagnitudeEpsilon + (sigma * sigma + 1) * reference.pow(2).sum() / omega;
                var den = o.MagnitudeEpsilon * o.MagnitudeEpsilon + sigma * sigma * dist.pow(2);
                return 0.25 * (num / den).log().sum().ToDouble() + Math.Log(m / sigma) + 10;
            }
            SharpnessResult R(string name, double value) => new()
            {
                Measure = name, Parameters = common, Value = value, Details = details, LossEvaluations = (long)evals * o.Samples, Seconds = probe.Seconds,
            };
            results.Add(R($"{prefix}-flatness", 1 / (sigma * sigma)));
            results.Add(R($"{prefix}-orig", Bound(w)));
            if (w0 is not null) results.Add(R($"{prefix}-init", Bound(w - w0)));
        }
        return results.ToArray();
    }

    /// <summary>
    /// Worst-case flatness 1/α'² (Jiang et al. "sharpness.flatness"; DESIGN.md §5.6): α' from the search, where at each α
    /// projected sign-gradient ascent on the training loss (<see cref="FlatnessSearchOptions.AscentSteps"/> steps of α/4,
    /// halved at 50% and 75%) looks for a point in the box |u_i| ≤ α (magnitude-aware: α|w_i| + ε) whose accuracy drops.
    /// </summary>
    public static SharpnessResult[] WorstCase(Objective objective, FlatnessSearchOptions? options = null, CancellationToken ct = default)
    {
        var o = options ?? new FlatnessSearchOptions();
        o.Validate();
        using var probe = new PerturbationProbe(objective);
        var acc0 = probe.EvaluateAt(null, ct: ct).Accuracy ?? throw new ValleyException("worst-case flatness needs a classification data set (accuracy)");
        var results = new List<SharpnessResult>();
        foreach (bool magnitude in new[] { false, true })
        {
            double Drop(double alpha)
            {
                using var scope = NewDisposeScope();
                var half = magnitude ? alpha * probe.Origin.abs() + o.MagnitudeEpsilon : full_like(probe.Origin, alpha);
                var u = zeros_like(probe.Origin);
                for (int k = 0; k < o.AscentSteps; k++)
                {
                    var (_, g) = probe.GradientAt(u, ct);
                    double step = 0.25 * (k >= 0.75 * o.AscentSteps ? 0.25 : k >= 0.5 * o.AscentSteps ? 0.5 : 1);
                    u = minimum(maximum(u + step * half * g.sign(), -half), half);
                }
                return Math.Abs(acc0 - probe.EvaluateAt(u, ct: ct).Accuracy!.Value);
            }
            var (alpha, evals) = Bisect(Drop, o);
            results.Add(new SharpnessResult
            {
                Measure = magnitude ? "worst-case-mag-flatness" : "worst-case-flatness",
                Parameters = new() { ["target_drop"] = o.TargetDrop, ["tolerance"] = o.Tolerance, ["depth"] = o.Depth, ["ascent_steps"] = o.AscentSteps, ["epsilon"] = magnitude ? o.MagnitudeEpsilon : 0 },
                Value = 1 / (alpha * alpha),
                Details = new() { ["alpha"] = alpha, ["train_accuracy"] = acc0 },
                GradientEvaluations = (long)evals * o.AscentSteps, LossEvaluations = evals, Seconds = probe.Seconds,
            });
        }
        return results.ToArray();
    }
}

/// <summary>
/// Relative flatness (Petzka et al. 2021; DESIGN.md §5.7) of one layer with weight matrix W (rows w_s = neuron s's incoming
/// weights): κ = Σ_{s,s'} ⟨w_s, w_s'⟩ Tr(H_{s,s'}), H the Hessian of the training loss with respect to W (exact, from
/// products with unit vectors). Default layer: the last weight matrix.
/// </summary>
public static class RelativeFlatness
{
    public static SharpnessResult Compute(nn.Module<Tensor, Tensor> model, LossFunction loss, Dataset data, string? layer = null, long batchSize = 2048, Distributed.IProcessGroup? group = null)
    {
        var weights = model.named_parameters().Where(p => p.parameter.dim() == 2).ToList();
        if (weights.Count == 0) throw new ValleyException("relative flatness: the model has no weight matrix (rank-2 parameter)");
        var name = layer ?? weights[^1].name;
        var chosen = model.named_parameters().FirstOrDefault(p => p.name == name);
        if (chosen.parameter is null || chosen.parameter.dim() != 2)
            throw new ValleyException($"--layer {name}: relative flatness needs a weight matrix; the model's are {string.Join(", ", weights.Select(w => w.name))}");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var obj = new Objective(model, loss, data, new ObjectiveOptions { BatchSize = batchSize, ParameterFilter = n => n == name, Group = group });
        var H = ExactHessian.Compute(new HessianOperator(obj));
        using var W = chosen.parameter.detach().to(ScalarType.Float64).cpu();
        int k = (int)W.shape[0], d = (int)W.shape[1];
        var gram = W.matmul(W.t()).data<double>().ToArray();
        double kappa = 0;
        for (int s = 0; s < k; s++)
            for (int t = 0; t < k; t++)
            {
                double tr = 0;
                for (int j = 0; j < d; j++) tr += H.Values[s * d + j, t * d + j];
                kappa += gram[s * k + t] * tr;
            }
        return new SharpnessResult
        {
            Measure = "relative-flatness", Parameters = new() { ["neurons"] = k, ["inputs"] = d }, Value = kappa,
            Details = new() { ["layer_hessian_trace"] = H.Trace() }, GradientEvaluations = k * d, Seconds = sw.Elapsed.TotalSeconds,
        };
    }
}

/// <summary>Fisher-based proxies (DESIGN.md §5.8).</summary>
public static class FisherProxies
{
    /// <summary>
    /// Trace of the empirical Fisher, (1/n) Σ_i ‖∇ℓ_i‖², from per-example gradients. For Valley's MLPs over all their parameters
    /// it is batched: one forward and one backward pass per batch give every example's gradient norm exactly, since for a
    /// linear layer ‖∂ℓ_i/∂W‖² = ‖δ_i‖²‖a_i‖² and ‖∂ℓ_i/∂b‖² = ‖δ_i‖² (Goodfellow 2015). Other models: one backward pass per example.
    /// </summary>
    public static SharpnessResult EmpiricalFisherTrace(Objective objective, CancellationToken ct = default)
    {
        if (objective.Model is Mlp mlp && objective.Parameters.Size == mlp.parameters().Sum(p => p.numel()))
            return BatchedMlpFisherTrace(objective, mlp, ct);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var model = objective.Model;
        bool was = model.training;
        model.train(objective.Options.TrainMode);
        var ps = objective.Parameters.Tensors.Cast<Tensor>().ToList();
        double sum = 0;
        var sq = new List<double>();
        try
        {
            var dtype = objective.Parameters.DType;
            for (long i = 0; i < objective.Data.Count; i++)
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var (x, y) = objective.ToModel(objective.Data.X.narrow(0, i, 1), objective.Data.Y.narrow(0, i, 1), objective.Data.Task);
                var l = objective.Loss(model.call(x), y);
                var g = autograd.grad([l], ps, allow_unused: true);
                double n2 = g.Where(t => t.Handle != IntPtr.Zero).Sum(t => t.pow(2).sum().ToDouble());
                sum += n2;
                sq.Add(n2);
            }
        }
        finally { model.train(was); }
        var (mean, se) = WorstCaseSharpness.MeanSe(objective.Group.AllGather(sq.ToArray()));
        return new SharpnessResult
        {
            Measure = "fisher-trace", Parameters = new() { ["examples"] = objective.Examples }, Value = mean, StandardError = se,
            GradientEvaluations = objective.Examples, Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    static SharpnessResult BatchedMlpFisherTrace(Objective objective, Mlp mlp, CancellationToken ct)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        bool was = mlp.training;
        mlp.train(objective.Options.TrainMode);
        var sq = new List<double>();
        try
        {
            foreach (var (x, y, size) in objective.Data.Batches(objective.Options.BatchSize))
            {
                ct.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                var (xx, yy) = objective.ToModel(x, y, objective.Data.Task);
                var (f, taps) = mlp.ForwardWithLinearActivations(xx);
                // Σ_i ℓ_i: its gradient with respect to z_k holds every example's δ_ik in row i.
                var total = objective.Loss(f, yy) * size;
                var deltas = autograd.grad([total], taps.Select(t => t.Output).ToList());
                var perExample = zeros(size, dtype: ScalarType.Float64, device: xx.device);
                for (int k = 0; k < taps.Count; k++)
                {
                    var d2 = deltas[k].to(ScalarType.Float64).pow(2).sum(1);
                    var a2 = taps[k].Input.detach().to(ScalarType.Float64).pow(2).sum(1);
                    perExample += d2 * (mlp.Bias ? a2 + 1 : a2);
                }
                sq.AddRange(perExample.cpu().data<double>().ToArray());
            }
        }
        finally { mlp.train(was); }
        var (mean, se) = WorstCaseSharpness.MeanSe(objective.Group.AllGather(sq.ToArray()));
        return new SharpnessResult
        {
            Measure = "fisher-trace", Parameters = new() { ["examples"] = objective.Examples }, Value = mean, StandardError = se,
            GradientEvaluations = objective.Examples, Seconds = sw.Elapsed.TotalSeconds, Details = new() { ["batched"] = 1 },
        };
    }

    /// <summary>
    /// Fisher-Rao norm (Liang et al. 2019) of a bias-free ReLU MLP with L+1 layers: ‖θ‖²_fr = (L+1)² E[⟨∂ℓ/∂f, f(x)⟩²] over the
    /// training data (true labels). Other architectures are refused: the identity behind it needs positive homogeneity.
    /// </summary>
    public static SharpnessResult FisherRaoNorm(Objective objective)
    {
        if (objective.Model is not Mlp { Bias: false, Activation: "relu" } mlp)
            throw new ValleyException("the Fisher-Rao norm is defined here for bias-free ReLU MLPs only (e.g. mlp:784-128-64-10:nobias); this model is not one");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int layers = mlp.Widths.Count - 1;
        var values = new List<double>();
        bool was = mlp.training;
        mlp.eval();
        try
        {
            foreach (var (x, y, _) in objective.Data.Batches(objective.Options.BatchSize))
            {
                using var scope = NewDisposeScope();
                var (xx, yy) = objective.ToModel(x, y, objective.Data.Task);
                var f = mlp.call(xx).detach().requires_grad_(true);
                // Per-example ∂ℓ_i/∂f_i: gradient of the summed per-example losses (the mean loss times the batch size).
                var l = objective.Loss(f, yy) * x.shape[0];
                var df = autograd.grad([l], [f])[0];
                var inner = (df * f).sum(1);
                values.AddRange(inner.pow(2).to(ScalarType.Float64).cpu().data<double>().ToArray());
            }
        }
        finally { mlp.train(was); }
        var (mean, se) = WorstCaseSharpness.MeanSe(objective.Group.AllGather(values.ToArray()));
        double k = (layers) * (double)layers;
        return new SharpnessResult
        {
            Measure = "fisher-rao-norm", Parameters = new() { ["layers"] = layers }, Value = k * mean, StandardError = k * se, Seconds = sw.Elapsed.TotalSeconds,
        };
    }
}
