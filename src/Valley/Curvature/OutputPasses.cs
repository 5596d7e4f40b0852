using TorchSharp;
using Valley.Distributed;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>The losses whose output Hessian and predictive distribution are known in closed form.</summary>
internal enum OutputLossKind { CrossEntropy, MeanSquaredError, BinaryCrossEntropy, Other }

/// <summary>
/// One batch's model outputs with their graph back to the objective's parameters, and the pieces the Gauss-Newton-type
/// operators build from it: Jacobian-vector products J v (the double-vjp trick: Jᵀu is linear in a dummy u, so the
/// derivative of ⟨Jᵀu, v⟩ with respect to u is J v; reverse mode only, one backward pass through the backward graph),
/// vector-Jacobian products Jᵀ w (one backward pass through the forward graph), and the loss's Hessian with respect to the
/// outputs. Outputs are seen as [B, C] (C the outputs per example).
/// </summary>
internal sealed class OutputBatch
{
    readonly List<Tensor> _params;
    readonly Tensor _u;
    readonly Tensor[] _jtu;
    readonly int[] _used;
    Tensor? _lossGrad;
    Tensor? _lossInput;

    /// <summary>The outputs f(x_B) as the model returned them (graph attached).</summary>
    public Tensor Output { get; }
    /// <summary>Targets, as the loss takes them.</summary>
    public Tensor Target { get; }
    /// <summary>Outputs as [B, C] without graph, float64-free (the model's dtype).</summary>
    public Tensor Flat { get; }
    /// <summary>Examples in the batch.</summary>
    public long Size { get; }
    /// <summary>Uniform variates one sampled label of one example takes: 1 for cross-entropy, 2C for MSE (Box-Muller), C for BCE.</summary>
    public int UniformsPerSample => Kind switch
    {
        OutputLossKind.CrossEntropy => 1,
        OutputLossKind.MeanSquaredError => (int)(2 * PerExample),
        _ => (int)PerExample,
    };
    /// <summary>Outputs per example C.</summary>
    public long PerExample { get; }
    /// <summary>The loss.</summary>
    public LossFunction Loss { get; }
    /// <summary>Which closed form the loss has.</summary>
    public OutputLossKind Kind { get; }

    public OutputBatch(Objective objective, Tensor output, Tensor target, long size, bool jacobianVector)
    {
        Output = output;
        Target = target;
        Size = size;
        Loss = objective.Loss;
        Kind = OutputPasses.KindOf(objective.Loss);
        PerExample = size == 0 ? 0 : output.numel() / size;
        Flat = output.detach().reshape(size, -1);
        _params = objective.Parameters.Tensors.Cast<Tensor>().ToList();
        if (!output.requires_grad)
            throw new ValleyException("the model's outputs do not depend on any selected parameter (does the model use them, and is autograd enabled?)");
        _u = zeros_like(output).requires_grad_(true);
        _jtu = [];
        _used = [];
        if (!jacobianVector) return;
        // Jᵀu with its graph, built once per batch and shared by every column of a block.
        var g = autograd.grad([output], _params, [_u], retain_graph: true, create_graph: true, allow_unused: true);
        _used = Enumerable.Range(0, g.Count).Where(i => OutputPasses.IsDefined(g[i]) && g[i].requires_grad).ToArray();
        _jtu = _used.Select(i => g[i]).ToArray();
        if (_used.Length == 0) throw new ValleyException("the model's outputs do not depend on any selected parameter");
    }

    /// <summary>Every tensor the batch holds (its graphs included), for a cache that keeps the batch beyond its dispose scope.</summary>
    // For a cache that keeps the batch: none may be a tensor the data source yielded (it disposes those when the pass moves
    // on), hence Build's own handle on the targets.
    public Tensor[] Tensors() =>
        new[] { Output, Target, Flat, _u }.Concat(_jtu).Concat(_lossGrad is null ? [] : new[] { _lossGrad, _lossInput! }).ToArray();

    /// <summary>J v as [B, C] for per-parameter views of v.</summary>
    public Tensor JacobianVector(Tensor[] v)
    {
        var jv = autograd.grad(_jtu, [_u], _used.Select(i => v[i]).ToList(), retain_graph: true, create_graph: false, allow_unused: true)[0];
        return (OutputPasses.IsDefined(jv) ? jv : zeros_like(_u)).detach().reshape(Size, -1);
    }

    /// <summary>Jᵀ w for w [B, C], added with weight <paramref name="alpha"/> into per-parameter views.</summary>
    public void AddTransposedJacobian(Tensor w, Tensor[] into, double alpha)
    {
        var g = autograd.grad([Output], _params, [w.reshape(Output.shape).to(Output.dtype)], retain_graph: true, create_graph: false, allow_unused: true);
        for (int i = 0; i < g.Count; i++)
            if (OutputPasses.IsDefined(g[i])) into[i].add_(g[i], alpha: alpha);
    }

    /// <summary>
    /// H w with H = ∇²_f L_B the Hessian of the batch's mean loss with respect to its outputs: closed forms for
    /// cross-entropy ((1/B)(diag p − p pᵀ) per example), MSE (2/(B C) I) and BCE (σ(1−σ)/(B C)); any other loss by
    /// double backward through the loss alone.
    /// </summary>
    public Tensor OutputHessian(Tensor w)
    {
        switch (Kind)
        {
            case OutputLossKind.CrossEntropy:
            {
                var p = Flat.softmax(1);
                return (p * w - p * (p * w).sum(1, keepdim: true)) / Size;
            }
            case OutputLossKind.MeanSquaredError:
                return w * (2.0 / (Size * PerExample));
            case OutputLossKind.BinaryCrossEntropy:
            {
                var s = Flat.sigmoid();
                return s * (1 - s) * w / (Size * PerExample);
            }
            default:
                if (_lossGrad is null) throw new InvalidOperationException("PrepareOutputHessian first, in the batch's dispose scope");
                var hw = autograd.grad([_lossGrad], [_lossInput!], [w.reshape(Output.shape)], retain_graph: true, allow_unused: true)[0];
                return (OutputPasses.IsDefined(hw) ? hw : zeros_like(w)).detach().reshape(Size, -1);
        }
    }

    /// <summary>
    /// Builds, for a loss without a closed form, the graph of ∇_f L_B that <see cref="OutputHessian"/> differentiates again;
    /// called in the batch's dispose scope so that it lives as long as the batch.
    /// </summary>
    public void PrepareOutputHessian()
    {
        if (Kind != OutputLossKind.Other || _lossGrad is not null) return;
        _lossInput = Output.detach().requires_grad_(true);
        _lossGrad = autograd.grad([Loss(_lossInput, Target)], [_lossInput], create_graph: true, retain_graph: true)[0];
    }

    /// <summary>δ_i = ∂ℓ_i/∂f_i for every example as [B, C]: B times the gradient of the batch's mean loss.</summary>
    public Tensor ExampleLossGradients()
    {
        var f = Output.detach().requires_grad_(true);
        var g = autograd.grad([Loss(f, Target)], [f])[0];
        return (g * Size).detach().reshape(Size, -1);
    }

    /// <summary>
    /// Gradients of the negative log-likelihood of labels sampled from the model's predictive distribution, scaled by
    /// 1/√r so that their second moment is the per-example output Hessian of the loss (r = 1 for cross-entropy, C for
    /// MSE and BCE, which average over the C outputs): [S, B, C]. Cross-entropy: ŷ ~ Categorical(softmax f), ∇ = p − e_ŷ;
    /// MSE: ŷ ~ N(f, ½ I), the Gaussian whose negative log-likelihood is the squared error, ∇ = 2(f − ŷ); BCE:
    /// ŷ ~ Bernoulli(σ(f)), ∇ = σ(f) − ŷ. The labels come from <paramref name="u"/>, uniform variates [S, B,
    /// <see cref="UniformsPerSample"/>] in [0, 1) (<see cref="ExampleUniforms"/>: keyed by each example's index, so that the
    /// labels depend neither on the batch size nor on the number of ranks).
    /// </summary>
    public Tensor SampledGradients(Tensor u)
    {
        var f = Flat.to(ScalarType.Float64);
        u = u.to(ScalarType.Float64).to(f.device);
        Tensor g;
        switch (Kind)
        {
            case OutputLossKind.CrossEntropy:
            {
                // Inversion: ŷ = #{c : P(y ≤ c) ≤ u}, capped at C − 1 against the rounding of the last cumulative sum.
                var p = f.softmax(1);
                var cdf = p.cumsum(1);
                var y = cdf.unsqueeze(0).le(u).sum(2).clamp_max(p.shape[1] - 1); // [S, B]
                g = p.unsqueeze(0) - nn.functional.one_hot(y, p.shape[1]).to(ScalarType.Float64);
                break;
            }
            case OutputLossKind.MeanSquaredError:
            {
                // ε ~ N(0, I) by Box-Muller (1 − u₁ is in (0, 1]); f − ŷ = −ε/√2, so ∇ = −√2 ε, scaled by 1/√C.
                var u1 = u.narrow(2, 0, PerExample);
                var u2 = u.narrow(2, PerExample, PerExample);
                var eps = (-2.0 * (-u1).log1p()).sqrt() * (2 * Math.PI * u2).cos();
                g = eps * (-Math.Sqrt(2.0 / PerExample));
                break;
            }
            case OutputLossKind.BinaryCrossEntropy:
            {
                var s = f.sigmoid();
                var y = u.lt(s.unsqueeze(0)).to(ScalarType.Float64);
                g = (s.unsqueeze(0) - y) / Math.Sqrt(PerExample);
                break;
            }
            default:
                throw new ValleyException("the Monte-Carlo Fisher needs the model's predictive distribution, known for the cross-entropy, mse and bce losses only");
        }
        return g.to(Flat.dtype);
    }

    /// <summary>
    /// The columns q_c of a square root of each example's output Hessian (Σ_c q_c q_cᵀ = ∇²_f ℓ_i), [C, B, C]:
    /// cross-entropy √p_c (e_c − p) since Σ_c p_c (e_c − p)(e_c − p)ᵀ = diag p − p pᵀ; MSE √(2/C) e_c; BCE √(σ_c(1−σ_c)/C) e_c.
    /// </summary>
    public Tensor OutputHessianRoot()
    {
        var f = Flat.to(ScalarType.Float64);
        long c = PerExample;
        var eye = torch.eye(c, dtype: ScalarType.Float64).to(f.device); // [C, C]
        Tensor q = Kind switch
        {
            OutputLossKind.CrossEntropy => Cross(f, eye),
            OutputLossKind.MeanSquaredError => eye.unsqueeze(1).expand(c, Size, c) * Math.Sqrt(2.0 / c),
            OutputLossKind.BinaryCrossEntropy => eye.unsqueeze(1) * (f.sigmoid() * (1 - f.sigmoid()) / c).sqrt().t().unsqueeze(2),
            _ => throw new ValleyException("the exact output-Hessian expectation is known for the cross-entropy, mse and bce losses only (use the empirical or Monte-Carlo expectation)"),
        };
        return q.to(Flat.dtype);

        static Tensor Cross(Tensor f, Tensor eye)
        {
            var p = f.softmax(1); // [B, C]
            // q[c, i, :] = √p_ic (e_c − p_i)
            return p.t().sqrt().unsqueeze(2) * (eye.unsqueeze(1) - p.unsqueeze(0));
        }
    }
}

/// <summary>Passes over an objective's batches with the model's outputs, for the Gauss-Newton-type operators.</summary>
internal static class OutputPasses
{
    public static OutputLossKind KindOf(LossFunction loss) =>
        ReferenceEquals(loss, Losses.CrossEntropy) ? OutputLossKind.CrossEntropy
        : ReferenceEquals(loss, Losses.MeanSquaredError) ? OutputLossKind.MeanSquaredError
        : ReferenceEquals(loss, Losses.BinaryCrossEntropy) ? OutputLossKind.BinaryCrossEntropy
        : OutputLossKind.Other;

    /// <summary>
    /// Calls <paramref name="body"/> with every batch (its index counted from 0 on this rank), in the objective's mode, each in
    /// its own dispose scope. Targets of shape [B] against outputs [B, 1] are compared as the losses do, by squeezing.
    /// </summary>
    public static void ForEach(Objective objective, bool jacobianVector, CancellationToken ct, Action<OutputBatch, int> body)
    {
        using var mode = new ModeScope(objective.Model, objective.Options.TrainMode);
        // Products (jacobianVector) keep each batch's outputs and Jᵀu graph while the weights are unchanged, within the
        // objective's graph budget: a cached product is then two backward passes per batch and no forward pass.
        var cache = jacobianVector ? objective.OutputGraphCacheForProduct() : null;
        int index = 0;
        foreach (var (x, y, size) in objective.Source.Batches(objective.Options.BatchSize))
        {
            ct.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            if (cache?.Payload(index) is OutputBatch kept)
            {
                body(kept, index++);
                continue;
            }
            bool measuring = cache is not null && cache.NeedsMeasurement;
            long before = measuring ? GraphCache.ResidentBytes(trim: true) : 0;
            var batch = Build(objective, x, y, size, jacobianVector);
            if (cache is not null)
            {
                batch.PrepareOutputHessian();
                long floor = batch.Output.numel() * batch.Output.dtype.ElementSize() * 2 + x.numel() * x.dtype.ElementSize();
                cache.TryKeep(index, batch.Tensors(), size, before, floor, batch);
                if (measuring) objective.RememberGraphSize(cache, "outputs");
            }
            body(batch, index++);
        }
    }

    static OutputBatch Build(Objective objective, Tensor x, Tensor y, long size, bool jacobianVector)
    {
        {
            var (xb, yb) = objective.ToModel(x, y, objective.Source.Task);
            var output = objective.Model.call(xb);
            var kind = KindOf(objective.Loss);
            if (kind is OutputLossKind.MeanSquaredError or OutputLossKind.BinaryCrossEntropy && output.dim() == 2 && output.shape[1] == 1 && yb.dim() == 1)
                output = output.squeeze(1);
            if (kind == OutputLossKind.CrossEntropy && output.dim() != 2)
                throw new ValleyException($"{objective.Source.Name}: the model's output has shape [{string.Join(", ", output.shape)}]; cross-entropy needs logits of shape [examples, classes]");
            if (kind is OutputLossKind.MeanSquaredError or OutputLossKind.BinaryCrossEntropy && !output.shape.SequenceEqual(yb.shape))
                throw new ValleyException($"{objective.Source.Name}: the model's outputs have shape [{string.Join(", ", output.shape)}], the targets [{string.Join(", ", yb.shape)}]");
            // The batch's own handle on the targets: a kept batch outlives the pass's views, which the source disposes.
            return new OutputBatch(objective, output, ReferenceEquals(yb, y) ? yb.alias() : yb, size, jacobianVector);
        }
    }

    public static bool IsDefined(Tensor t)
    {
        try { return t is not null && t.Handle != IntPtr.Zero && t.numel() >= 0; }
        catch (Exception) { return false; }
    }

    /// <summary>The sum over ranks of a result [k, n] in place (the data-parallel all-reduce, as the Hessian's).</summary>
    public static void AllReduce(Objective objective, Tensor result)
    {
        if (objective.Group.Size <= 1) return;
        using var summed = objective.Group.Sum(result);
        result.copy_(summed);
    }
}

/// <summary>The product loop every Gauss-Newton-type operator shares.</summary>
internal static class GaussNewtonProduct
{
    /// <summary>
    /// (1/N) Σ_batches J_Bᵀ M_B J_B V for a block V [n, k], where <paramref name="middle"/> gives, for a batch and its index,
    /// the map w ↦ M_B w on [B, C] outputs (built once per batch, applied to each column). Summed over ranks.
    /// </summary>
    public static Tensor Block(Objective objective, Tensor V, CancellationToken ct, Func<OutputBatch, int, Func<Tensor, Tensor>> middle)
    {
        var ps = objective.Parameters;
        int k = (int)V.shape[1];
        double alpha = 1.0 / objective.Examples;
        var result = zeros([k, ps.Size], dtype: ps.DType, device: ps.Device);
        using (var outer = NewDisposeScope())
        {
            var Vt = V.to(ps.DType, ps.Device).t().contiguous();
            var vs = new Tensor[k][];
            var outs = new Tensor[k][];
            for (int j = 0; j < k; j++)
            {
                vs[j] = ps.Unflatten(Vt[j]);
                outs[j] = ps.Unflatten(result[j]);
            }
            OutputPasses.ForEach(objective, jacobianVector: true, ct, (batch, index) =>
            {
                var m = middle(batch, index);
                for (int j = 0; j < k; j++)
                {
                    using var inner = NewDisposeScope();
                    batch.AddTransposedJacobian(m(batch.JacobianVector(vs[j])), outs[j], alpha);
                }
            });
        }
        OutputPasses.AllReduce(objective, result);
        var block = result.t();
        result.Dispose();
        return block;
    }
}

/// <summary>
/// Uniform variates for the labels sampled by the Monte-Carlo Fisher and K-FAC, keyed by (seed, example, sample, component)
/// through a SplitMix64 hash (<see cref="Seeds.Derive"/>), with the example's index counted over all ranks in order (this
/// rank's examples follow those of the ranks before it). An example therefore gets the same labels whatever the batch size
/// and however many ranks share the data, and every product of one operator sees the same labels.
/// </summary>
internal sealed class ExampleUniforms
{
    readonly long _seed;
    readonly long _rankStart;
    long _next;
    int _last = -1;

    /// <remarks>
    /// Collective when the objective's data are sharded: every rank makes its operator together (as it makes its objective),
    /// and the all-gather of the ranks' example counts happens here, not inside a pass that a rank might never enter.
    /// </remarks>
    public ExampleUniforms(Objective objective, long seed)
    {
        _seed = seed;
        var group = objective.Group;
        _rankStart = group.Size <= 1 ? 0 : (long)group.AllGather([objective.Source.Count]).Take(group.Rank).Sum();
    }

    /// <summary>
    /// [S, B, k] variates in [0, 1) for batch <paramref name="index"/> of a pass. Batches come in order from 0 in every pass;
    /// each starts where the one before it ended, so a source that cuts its batches differently from pass to pass still
    /// gives every example its own index.
    /// </summary>
    public Tensor For(OutputBatch batch, int index, int samples)
    {
        if (index == 0) _next = 0;
        else if (index != _last + 1) throw new InvalidOperationException($"batch {index} of a pass after batch {_last}: batches must come in order");
        _last = index;
        long start = _rankStart + _next;
        _next += batch.Size;
        return Uniforms(_seed, start, batch.Size, samples, batch.UniformsPerSample);
    }

    /// <summary>
    /// <see cref="Uniform"/> of examples [start, start + count) × samples × components as one tensor [S, count, k], computed
    /// by int64 tensor operations (wrapping, as the hash's unsigned arithmetic): an MSE model with 784 outputs needs 1,568
    /// variates per example, too many for a loop on the CPU's managed side.
    /// </summary>
    internal static Tensor Uniforms(long seed, long start, long count, int samples, int k)
    {
        using var scope = NewDisposeScope();
        // Derive(seed, example, sample, component) = Mix(Mix(Mix(Mix(Mix(4) ^ seed) ^ example) ^ sample) ^ component).
        long h = (long)Seeds.Mix(Seeds.Mix(4) ^ (ulong)seed);
        var examples = arange(start, start + count, dtype: ScalarType.Int64);
        var perExample = Mix(examples.bitwise_xor(h));                                                    // [B]
        var perSample = Mix(perExample.unsqueeze(0).bitwise_xor(arange(samples, dtype: ScalarType.Int64).unsqueeze(1)));   // [S, B]
        var all = Mix(perSample.unsqueeze(2).bitwise_xor(arange(k, dtype: ScalarType.Int64).reshape(1, 1, k)));            // [S, B, k]
        return (ShiftRight(all, 11).to(ScalarType.Float64) * (1.0 / (1UL << 53))).MoveToOuterDisposeScope();
    }

    /// <summary><see cref="Seeds.Mix"/> on int64 tensors: additions and products wrap modulo 2⁶⁴ as the unsigned ones do.</summary>
    static Tensor Mix(Tensor z)
    {
        z = z + unchecked((long)0x9E3779B97F4A7C15UL);
        z = z.bitwise_xor(ShiftRight(z, 30)) * unchecked((long)0xBF58476D1CE4E5B9UL);
        z = z.bitwise_xor(ShiftRight(z, 27)) * unchecked((long)0x94D049BB133111EBUL);
        return z.bitwise_xor(ShiftRight(z, 31));
    }

    /// <summary>The logical (unsigned) right shift of int64 words: the arithmetic shift with the copied sign bits masked off.</summary>
    static Tensor ShiftRight(Tensor z, int bits) => z.bitwise_right_shift(bits).bitwise_and((1L << (64 - bits)) - 1);

    /// <summary>The variate of one (seed, example, sample, component): the top 53 bits of its hash, as a double in [0, 1).</summary>
    public static double Uniform(long seed, long example, int sample, int component) =>
        (Seeds.Derive(seed, example, sample, component) >> 11) * (1.0 / (1UL << 53));
}
