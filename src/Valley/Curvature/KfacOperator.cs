using TorchSharp;
using TorchSharp.Modules;
using Valley.Curvature.Spectrum;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>Over which labels K-FAC's output-gradient factor G is an expectation.</summary>
public enum KfacExpectation
{
    /// <summary>
    /// Exactly over the model's predictive distribution: backpropagate the columns of a square root of each example's
    /// output Hessian (cross-entropy, MSE, BCE), so that G is that of the GGN (the "type-2" K-FAC).
    /// </summary>
    Exact,

    /// <summary>Labels sampled from the model's predictive distribution, <see cref="KfacOptions.Samples"/> per example (Martens &amp; Grosse 2015 §5; the default).</summary>
    MonteCarlo,

    /// <summary>The data's own labels: the Kronecker-factored empirical Fisher.</summary>
    Empirical,
}

/// <summary>Options of <see cref="KfacOperator"/>.</summary>
public sealed record KfacOptions
{
    /// <summary>
    /// The expectation behind G. Default <see cref="KfacExpectation.MonteCarlo"/> with one label per example, as published
    /// (Martens &amp; Grosse 2015 §5) and as curvlinops and BackPACK do: one backward pass per batch whatever the number of
    /// classes C, where <see cref="KfacExpectation.Exact"/> (deterministic, the "type-2" K-FAC, KFLR in BackPACK) needs C.
    /// Losses other than cross-entropy, MSE and BCE need <see cref="KfacExpectation.Empirical"/>.
    /// </summary>
    public KfacExpectation Expectation { get; init; } = KfacExpectation.MonteCarlo;

    /// <summary>Labels per example for <see cref="KfacExpectation.MonteCarlo"/>. Default 1.</summary>
    public int Samples { get; init; } = 1;

    /// <summary>Seed of the sampled labels.</summary>
    public long Seed { get; init; }
}

/// <summary>A layer K-FAC approximates by A ⊗ G.</summary>
/// <param name="Name">The module's name (e.g. "layers.0").</param>
/// <param name="Kind">"linear" or "conv2d".</param>
/// <param name="Parameters">Its selected parameters (weight, and bias when selected).</param>
/// <param name="InputDimension">Order of A: inputs per output (in-features, or in-channels × kernel area), plus 1 with a bias.</param>
/// <param name="OutputDimension">Order of G: out-features or out-channels.</param>
public sealed record KfacLayer(string Name, string Kind, IReadOnlyList<string> Parameters, long InputDimension, long OutputDimension);

/// <summary>
/// K-FAC (Martens &amp; Grosse 2015, eq. 1 and §3; Grosse &amp; Martens 2016, KFC, for convolutions): the Fisher's diagonal block
/// of each Linear and Conv2d layer approximated by A ⊗ G, with A = (1/N) Σ_i (1/T) Σ_t ā_it ā_itᵀ the second moment of the
/// layer's inputs (with a 1 appended for the bias; a convolution's patches t = 1..T, as KFC's spatially uncorrelated
/// derivatives assume) and G = (1/N) Σ_i Σ_t E[g_it g_itᵀ] that of the gradients at its outputs, over labels as
/// <see cref="KfacOptions.Expectation"/> says. Blocks of different layers are zero, and so are parameters of layers it does
/// not cover (<see cref="UncoveredParameters"/>: BatchNorm, grouped convolutions, TorchScript models...). The factors are
/// computed once, at construction, at the weights of that moment (one pass over the data with forward hooks); every product,
/// eigenvalue, trace, diagonal and Frobenius norm then comes from them: the eigenvalues of A ⊗ G are the products of the
/// factors' eigenvalues, so <see cref="Eigenvalues"/> needs no operator product.
/// </summary>
public sealed class KfacOperator : CurvatureOperator, IExactDiagonal, IDisposable
{
    sealed record Block(KfacLayer Layer, nn.Module Module, int Weight, int Bias, Tensor A, Tensor G);

    readonly List<Block> _blocks = [];

    /// <summary>The objective the factors were computed over.</summary>
    public Objective Objective { get; }

    /// <summary>The options the factors were computed with.</summary>
    public KfacOptions Options { get; }

    /// <summary>The layers approximated, in the model's order.</summary>
    public IReadOnlyList<KfacLayer> Layers => _blocks.Select(b => b.Layer).ToList();

    /// <summary>Selected parameters no covered layer holds: the operator is zero on them.</summary>
    public IReadOnlyList<string> UncoveredParameters { get; }

    /// <summary>Computes the Kronecker factors of every covered layer (one pass over the objective's data).</summary>
    /// <param name="objective">The objective (not owned: dispose it yourself).</param>
    /// <param name="options">Expectation, samples, seed; null: the defaults (one sampled label per example, seed 0).</param>
    /// <param name="ct">Checked between batches.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="KfacOptions"/>), or the objective is in train mode and its model has BatchNorm layers.</exception>
    public KfacOperator(Objective objective, KfacOptions? options = null, CancellationToken ct = default)
    {
        Objective = objective;
        Options = options ?? new KfacOptions();
        Check.AtLeast(Options.Samples, 1, nameof(Options.Samples));
        if (!Enum.IsDefined(Options.Expectation)) throw Check.OutOfRange(nameof(Options.Expectation), Options.Expectation, "must be Exact, MonteCarlo or Empirical");
        PerExampleCurvature.RequireIndependentExamples(objective, "K-FAC");
        var kind = OutputPasses.KindOf(objective.Loss);
        if (kind == OutputLossKind.Other && Options.Expectation != KfacExpectation.Empirical)
            throw new ValleyException("K-FAC's exact and Monte-Carlo expectations need the model's predictive distribution, known for the cross-entropy, mse and bce losses only (use the empirical expectation)");
        var names = objective.Parameters.Names.ToList();
        var covered = new HashSet<int>();
        foreach (var (name, module) in objective.Model.named_modules())
        {
            if (module is not Linear && !(module is Conv2d c && c.groups == 1 && c.padding_mode == PaddingModes.Zeros && c.padding_type is null)) continue;
            string prefix = name.Length == 0 ? "" : name + ".";
            int w = names.IndexOf(prefix + "weight"), b = names.IndexOf(prefix + "bias");
            if (w < 0) continue;
            long outDim = objective.Parameters.Shapes[w][0], inDim = objective.Parameters.Shapes[w].Skip(1).Aggregate(1L, (x, y) => x * y) + (b >= 0 ? 1 : 0);
            var layer = new KfacLayer(name, module is Linear ? "linear" : "conv2d", b >= 0 ? [names[w], names[b]] : [names[w]], inDim, outDim);
            var dt = ScalarType.Float64;
            // Each factor is dense float64, and its eigendecomposition needs about as much again.
            MachineLimits.EnsureMemory(2.0 * (inDim * inDim + outDim * outDim) * sizeof(double), $"K-FAC's factors of layer {(name.Length == 0 ? "(model)" : name)} ({inDim}×{inDim} and {outDim}×{outDim})");
            _blocks.Add(new Block(layer, module, w, b,
                zeros([inDim, inDim], dtype: dt, device: objective.Parameters.Device).DetachFromDisposeScope(),
                zeros([outDim, outDim], dtype: dt, device: objective.Parameters.Device).DetachFromDisposeScope()));
            covered.Add(w);
            if (b >= 0) covered.Add(b);
        }
        UncoveredParameters = names.Where((_, i) => !covered.Contains(i)).ToList();
        // A K-FAC that covers nothing is the zero matrix: reporting its eigenvalues as converged zeros would be a wrong number.
        if (_blocks.Count == 0)
            throw new ValleyException($"K-FAC covers none of the selected parameters ({string.Join(", ", UncoveredParameters.Take(5))}{(UncoveredParameters.Count > 5 ? ", …" : "")}): " +
                                      "it approximates the Linear and Conv2d layers of built-in models only (a TorchScript archive's layers are opaque to it); use the GGN or the Hessian");
        ComputeFactors(ct);
    }

    void ComputeFactors(CancellationToken ct)
    {
        var captured = new (Tensor Input, Tensor Output)?[_blocks.Count];
        var removers = new List<Action>();
        try
        {
            for (int l = 0; l < _blocks.Count; l++)
            {
                int layer = l;
                var module = (nn.Module<Tensor, Tensor>)_blocks[l].Module;
                // The model may dispose its intermediate tensors' handles (the graph keeps the values): keep our own handles, and put the layer's output back as a view, on the path to the model's
                // output, so that gradients with respect to it can be asked for.
                var remover = module.register_forward_hook((m, input, output) =>
                {
                    var view = output.view(output.shape).DetachFromDisposeScope();
                    captured[layer] = (input.detach().DetachFromDisposeScope(), view);
                    // A second view for the model, which may dispose it (Sequential disposes its intermediate results).
                    return view.view(output.shape);
                });
                removers.Add(() => remover.remove());
            }
            var uniforms = new ExampleUniforms(Objective, Options.Seed);
            OutputPasses.ForEach(Objective, jacobianVector: false, ct, (batch, index) =>
            {
                var outputs = new List<Tensor>();
                var present = new List<int>();
                for (int l = 0; l < _blocks.Count; l++)
                {
                    if (captured[l] is not { } io) continue;
                    AddInputMoment(_blocks[l], io.Input);
                    outputs.Add(io.Output);
                    present.Add(l);
                }
                // The vectors backpropagated from the outputs, with the weight of each: E[g gᵀ] = Σ_q weight · (Jᵀq)(Jᵀq)ᵀ.
                var (q, weight) = Options.Expectation switch
                {
                    KfacExpectation.Exact => (batch.OutputHessianRoot(), 1.0),
                    KfacExpectation.MonteCarlo => (batch.SampledGradients(uniforms.For(batch, index, Options.Samples)), 1.0 / Options.Samples),
                    _ => (batch.ExampleLossGradients().unsqueeze(0), 1.0),
                };
                // Σ_q gᵀg per layer in the model's dtype (a float32 matrix product is about twice as fast as float64),
                // added to the float64 factor once per batch.
                var sums = new Tensor?[present.Count];
                for (long s = 0; s < q.shape[0]; s++)
                {
                    using var inner = NewDisposeScope();
                    var grads = autograd.grad([batch.Output], outputs, [q[s].reshape(batch.Output.shape).to(batch.Output.dtype)], retain_graph: true, allow_unused: true);
                    for (int j = 0; j < present.Count; j++)
                    {
                        if (!OutputPasses.IsDefined(grads[j])) continue;
                        var g = PerPosition(_blocks[present[j]], grads[j]);
                        if (g.dtype is not (ScalarType.Float32 or ScalarType.Float64)) g = g.to(ScalarType.Float32);
                        var gg = g.t().matmul(g);
                        if (sums[j] is { } sum) sum.add_(gg);
                        else sums[j] = gg.MoveToOuterDisposeScope();
                    }
                }
                for (int j = 0; j < present.Count; j++)
                    if (sums[j] is { } sum) _blocks[present[j]].G.add_(sum.to(ScalarType.Float64), alpha: weight);
                Release(captured);
            });
        }
        finally
        {
            foreach (var r in removers) r();
            Release(captured);
        }
        double n = Objective.Examples;
        foreach (var b in _blocks)
        {
            b.A.div_(n);
            b.G.div_(n);
            OutputPasses.AllReduce(Objective, b.A);
            OutputPasses.AllReduce(Objective, b.G);
        }
    }

    static void Release((Tensor Input, Tensor Output)?[] captured)
    {
        for (int i = 0; i < captured.Length; i++)
        {
            if (captured[i] is { } io)
            {
                io.Input.Dispose();
                io.Output.Dispose();
            }
            captured[i] = null;
        }
    }

    /// <summary>A += Σ_i (1/T) Σ_t ā_it ā_itᵀ for one batch of a layer's inputs.</summary>
    static void AddInputMoment(Block b, Tensor input)
    {
        using var scope = NewDisposeScope();
        // The batch's moment in the model's dtype (float32: about twice as fast as float64), accumulated in float64; half
        // precision is raised to float32 (its sums would overflow or lose most digits).
        var x = input.detach();
        if (x.dtype is not (ScalarType.Float32 or ScalarType.Float64)) x = x.to(ScalarType.Float32);
        long batch = x.shape[0];
        Tensor a; // [B, T, in]
        if (b.Module is Conv2d c)
        {
            var patches = nn.functional.unfold(x, (c.kernel_size[0], c.kernel_size[1]), (c.dilation[0], c.dilation[1]), (c.padding![0], c.padding[1]), (c.stride[0], c.stride[1]));
            a = patches.transpose(1, 2);
        }
        else a = x.reshape(batch, -1, x.shape[^1]);
        long t = a.shape[1];
        var flat = a.reshape(-1, a.shape[2]);
        long d = flat.shape[1];
        // Σ āāᵀ with ā = (a, 1) for a bias, by blocks instead of appending a column of ones: no copy of the inputs, and
        // the matrix product keeps the inputs' own width (a multiple of 8 or 16 for most layers, which BLAS kernels like).
        b.A.narrow(0, 0, d).narrow(1, 0, d).add_(Gram(flat), alpha: 1.0 / t);
        if (b.Bias >= 0)
        {
            var sums = flat.sum(dim: 0).to(ScalarType.Float64);
            b.A.narrow(0, d, 1).narrow(1, 0, d).add_(sums.unsqueeze(0), alpha: 1.0 / t);
            b.A.narrow(0, 0, d).narrow(1, d, 1).add_(sums.unsqueeze(1), alpha: 1.0 / t);
            b.A[d, d].add_(flat.shape[0] / (double)t);
        }
    }

    /// <summary>
    /// XᵀX in float64 from a product in X's dtype. A wide X is split into two column blocks and only the three blocks on
    /// and above the diagonal are multiplied (the fourth is the transpose of one of them): 3/4 of the multiply-adds, which
    /// for an MLP's first layer on images is most of K-FAC's pass over the data.
    /// </summary>
    internal static Tensor Gram(Tensor x)
    {
        long d = x.shape[1];
        if (d < 512) return x.t().matmul(x).to(ScalarType.Float64);
        long h = d / 2 / 16 * 16; // column blocks whose widths stay multiples of 16 where d is
        var x1 = x.narrow(1, 0, h);
        var x2 = x.narrow(1, h, d - h);
        var g = empty([d, d], dtype: ScalarType.Float64, device: x.device);
        g.narrow(0, 0, h).narrow(1, 0, h).copy_(x1.t().matmul(x1));
        g.narrow(0, h, d - h).narrow(1, h, d - h).copy_(x2.t().matmul(x2));
        var upper = x1.t().matmul(x2);
        g.narrow(0, 0, h).narrow(1, h, d - h).copy_(upper);
        g.narrow(0, h, d - h).narrow(1, 0, h).copy_(upper.t());
        return g;
    }

    /// <summary>A layer's output gradients as rows, one per example and position: [B·T, out].</summary>
    static Tensor PerPosition(Block b, Tensor grad) =>
        b.Module is Conv2d ? grad.flatten(2).transpose(1, 2).reshape(-1, grad.shape[1]) : grad.reshape(-1, grad.shape[^1]);

    /// <summary>The input factor A of a layer (float64, [InputDimension, InputDimension]; owned by the operator).</summary>
    /// <param name="layer">Index into <see cref="Layers"/>.</param>
    public Tensor InputFactor(int layer) => _blocks[layer].A;

    /// <summary>The output-gradient factor G of a layer (float64, [OutputDimension, OutputDimension]; owned by the operator).</summary>
    /// <param name="layer">Index into <see cref="Layers"/>.</param>
    public Tensor OutputFactor(int layer) => _blocks[layer].G;

    /// <inheritdoc/>
    public override long Size => Objective.Size;

    /// <inheritdoc/>
    public override ScalarType DType => Objective.Parameters.DType;

    /// <inheritdoc/>
    public override Device Device => Objective.Parameters.Device;

    /// <inheritdoc/>
    protected override Tensor ApplyCore(Tensor v)
    {
        using var scope = NewDisposeScope();
        return ApplyBlockCore(v.unsqueeze(1)).squeeze(1).MoveToOuterDisposeScope();
    }

    /// <inheritdoc/>
    protected override Tensor ApplyBlockCore(Tensor V)
    {
        using var scope = NewDisposeScope();
        long k = V.shape[1];
        var Vt = V.to(ScalarType.Float64).t(); // [k, n]
        var result = zeros([k, Size], dtype: ScalarType.Float64, device: V.device);
        var offsets = Objective.Parameters.Offsets;
        foreach (var b in _blocks)
        {
            long outDim = b.Layer.OutputDimension, inW = b.Layer.InputDimension - (b.Bias >= 0 ? 1 : 0);
            var vbar = Vt.narrow(1, offsets[b.Weight], outDim * inW).reshape(k, outDim, inW);
            if (b.Bias >= 0) vbar = cat([vbar, Vt.narrow(1, offsets[b.Bias], outDim).reshape(k, outDim, 1)], 2);
            // (G ⊗ A) vec(V̄) = vec(G V̄ A) for row-major vec of V̄ [out, in].
            var r = b.G.matmul(vbar).matmul(b.A);
            result.narrow(1, offsets[b.Weight], outDim * inW).copy_(r.narrow(2, 0, inW).reshape(k, -1));
            if (b.Bias >= 0) result.narrow(1, offsets[b.Bias], outDim).copy_(r.narrow(2, inW, 1).reshape(k, -1));
        }
        return result.t().to(DType).MoveToOuterDisposeScope();
    }

    /// <summary>Every eigenvalue of the approximation, largest first: the products λ_a λ_g of each layer's factors' eigenvalues, and a zero for every uncovered parameter.</summary>
    public double[] Eigenvalues()
    {
        using var scope = NewDisposeScope();
        var all = new List<double>((int)Math.Min(Size, int.MaxValue));
        foreach (var b in _blocks)
        {
            var la = linalg.eigvalsh(b.A);
            var lg = linalg.eigvalsh(b.G);
            all.AddRange(lg.unsqueeze(1).mul(la.unsqueeze(0)).flatten().cpu().data<double>().ToArray());
        }
        while (all.Count < Size) all.Add(0);
        all.Sort((x, y) => y.CompareTo(x));
        return all.ToArray();
    }

    /// <summary>
    /// Candidates for the k largest eigenvalues, and the k largest in magnitude, of every layer's A ⊗ G, largest first: a
    /// product λ_a λ_g is among the k largest (or largest in magnitude) only if each factor is among the k largest or k
    /// smallest of its own factor's eigenvalues, so only those 2k × 2k products per layer are formed, not all of them (the
    /// first layer of an MLP on images alone has ~10⁵), and zeros for the uncovered parameters.
    /// </summary>
    double[] ExtremeProducts(int k)
    {
        using var scope = NewDisposeScope();
        var all = new List<double>();
        // In the model's dtype: the factors were accumulated from products in that dtype, so a float64 eigensolver would
        // not make a float32 model's eigenvalues more accurate, only twice as slow (a 785×785 factor: ~55 ms against ~25).
        var dt = DType is ScalarType.Float64 or ScalarType.Float32 ? DType : ScalarType.Float64;
        foreach (var b in _blocks)
        {
            var la = ExtremeEigenvalues(b.A, k, dt);
            var lg = ExtremeEigenvalues(b.G, k, dt);
            foreach (var x in la) foreach (var y in lg) all.Add(x * y);
        }
        if (all.Count < Size) all.AddRange(Enumerable.Repeat(0.0, (int)Math.Min(k, Size - all.Count)));
        all.Sort((x, y) => y.CompareTo(x));
        return all.ToArray();
    }

    /// <summary>
    /// The eigenvalues of a factor that products among the k largest (or largest in magnitude) can come from, ascending:
    /// its k smallest and k largest, or all of them when there are at most 2k. For a large factor the k largest come from a
    /// randomized block Krylov space (Musco &amp; Musco 2015; blocks of k + 8 vectors, Rayleigh-Ritz after 6 and after 8
    /// blocks), accepted only when every residual ‖F y − θ y‖ is below 1e-6·θ: each θ is then within that of an eigenvalue
    /// and, by interlacing, not above the one it stands for, so the error is about residual²/gap. A factor is positive
    /// semi-definite, so its smallest eigenvalues lie in [0, θ_min] and their products are never among the largest: zeros
    /// stand in for them. Otherwise (or for a small factor) the dense eigensolver gives all of them, in <paramref name="dt"/>.
    /// </summary>
    /// <remarks>
    /// The Krylov space is built in float64 whatever <paramref name="dt"/>: its products cost little next to a dense
    /// eigensolver, and in float32 the residual of a small θ cannot fall below about u·‖F‖ (u = 6e-8), so a factor whose
    /// fifth eigenvalue is 40× below its first (an MLP's input factor on images) would always miss the 1e-6·θ test and fall
    /// back to the dense solver.
    /// </remarks>
    internal static double[] ExtremeEigenvalues(Tensor factor, int k, ScalarType dt)
    {
        long m = factor.shape[0];
        if (m > 256 && MaxKrylovBlocks * (long)(k + 8) < m / 2 && KrylovLargest(factor, k) is { } largest)
            return Enumerable.Repeat(0.0, k).Concat(largest).ToArray();
        var all = linalg.eigvalsh(factor.to(dt)).to(ScalarType.Float64).cpu().data<double>().ToArray();
        return all.Length <= 2 * k ? all : all.Take(k).Concat(all.Skip(all.Length - k)).ToArray();
    }

    const int MaxKrylovBlocks = 8;

    /// <summary>
    /// The k largest eigenvalues of a PSD factor, ascending, from a block Krylov space with an orthonormal basis (blocks of
    /// k + 8), or null when they do not pass the residual test after 6 or 8 blocks. Each block's product F·Q_i is kept, so
    /// the Rayleigh-Ritz matrix QᵀFQ and the residuals F y − θ y = (FQ)s − θ Qs need no further products (float64: their
    /// rounding, about u‖F‖, stays far below 1e-6·θ unless θ is below 1e-8‖F‖, where the dense solver answers instead).
    /// </summary>
    static double[]? KrylovLargest(Tensor factor, int k)
    {
        using var scope = NewDisposeScope();
        var f = factor.to(ScalarType.Float64);
        long m = f.shape[0];
        int b = k + 8;
        var basis = empty([m, MaxKrylovBlocks * b], dtype: ScalarType.Float64, device: f.device);
        var images = empty([m, MaxKrylovBlocks * b], dtype: ScalarType.Float64, device: f.device);
        var q = linalg.qr(randn([m, b], dtype: ScalarType.Float64, generator: new Generator(12345)).to(f.device)).Q;
        for (int i = 1; ; i++)
        {
            using var step = NewDisposeScope();
            basis.narrow(1, (i - 1) * b, b).copy_(q);
            var w = images.narrow(1, (i - 1) * b, b);
            w.copy_(f.matmul(q));
            var Q = basis.narrow(1, 0, i * b);
            var FQ = images.narrow(1, 0, i * b);
            // The spectra of layers' factors decay fast: six blocks usually suffice (the first layer's input factor of an MLP on
            // Fashion-MNIST: relative residuals 3e-4, 7e-6, 1e-7, 2e-9, 3e-11 after 4 to 8 blocks).
            if (i >= 6 && i % 2 == 0)
            {
                var t = Q.t().matmul(FQ);
                var (theta, s) = linalg.eigh((t + t.t()) / 2);    // ascending
                var top = s.narrow(1, s.shape[1] - k, k);
                var th = theta.narrow(0, theta.shape[0] - k, k);
                var residual = (FQ.matmul(top) - Q.matmul(top) * th.unsqueeze(0)).norm(0);
                double smallest = th.min().ToDouble(), largest = th.max().ToDouble();
                // The Ritz vectors are unit vectors and the Ritz values those of a projection only if the basis is orthonormal.
                double lost = (Q.t().matmul(Q) - eye(Q.shape[1], dtype: ScalarType.Float64, device: Q.device)).abs().max().ToDouble();
                // Each pair against its own θ, so that a small θ_k is as accurate relative to itself as θ₁.
                if (lost <= 1e-10 && smallest > 1e-8 * largest && (residual / th).max().ToDouble() <= 1e-6) return th.cpu().data<double>().ToArray();
                if (i >= MaxKrylovBlocks) return null;
            }
            // The next block: the last image orthogonalized against the basis (classical Gram-Schmidt twice: Giraud et al.
            // 2005), normalized by a QR, and orthogonalized and normalized once more: where a column had almost nothing
            // outside the basis (a factor of low rank exhausts the space), the first QR normalized rounding noise.
            var r = w - Q.matmul(Q.t().matmul(w));
            r = r - Q.matmul(Q.t().matmul(r));
            var next = linalg.qr(r).Q;
            next = linalg.qr(next - Q.matmul(Q.t().matmul(next))).Q;
            q = next.MoveToOuterDisposeScope();
        }
    }

    /// <summary>The k largest (or, with <see cref="EigenTarget.Smallest"/>, smallest) eigenvalues from the factors, exactly, as an <see cref="Eigenpairs"/> record (no products, zero residuals).</summary>
    /// <param name="k">How many.</param>
    /// <param name="target">Largest (default) or Smallest.</param>
    public Eigenpairs TopEigenvalues(int k, EigenTarget target = EigenTarget.Largest)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var all = target == EigenTarget.Smallest ? Eigenvalues() : ExtremeProducts(k);
        var values = target == EigenTarget.Smallest ? all.Reverse().Take(k).ToArray()
            : target == EigenTarget.LargestMagnitude ? all.OrderByDescending(Math.Abs).Take(k).ToArray() : all.Take(k).ToArray();
        return new Eigenpairs
        {
            Method = "kfac-factors", Target = target, Values = values, Residuals = new double[values.Length], Products = 0, Iterations = 0,
            Converged = true, StopReason = StopReason.Converged, StopMessage = "exact: products of the Kronecker factors' eigenvalues", Seconds = sw.Elapsed.TotalSeconds,
        };
    }

    /// <summary>Which expectation G is, in words, for output: "G over labels sampled from the model (1 per example, seed 0)".</summary>
    public string ExpectationDescription => Options.Expectation switch
    {
        KfacExpectation.Exact => "G exactly over the model's predictive distribution",
        KfacExpectation.MonteCarlo => $"G over labels sampled from the model ({Options.Samples} per example, seed {Options.Seed})",
        _ => "G over the data's labels (empirical)",
    };

    /// <summary>tr(A ⊗ G) summed over layers: Σ tr A · tr G, exactly.</summary>
    public double Trace() => _blocks.Sum(b => b.A.trace().ToDouble() * b.G.trace().ToDouble());

    /// <summary>The trace as a <see cref="TraceEstimate"/> (method "kfac-factors", standard error 0, no products).</summary>
    public TraceEstimate TraceEstimate() => new()
    {
        Method = "kfac-factors", Trace = Trace(), StandardError = 0, Probes = 0, Products = 0, Converged = true,
    };

    /// <summary>‖A ⊗ G‖_F over all layers: √(Σ ‖A‖_F² ‖G‖_F²), exactly.</summary>
    public double FrobeniusNorm() => Math.Sqrt(_blocks.Sum(b => Math.Pow(b.A.norm().ToDouble() * b.G.norm().ToDouble(), 2)));

    /// <summary>The diagonal, exactly: diag(G) ⊗ diag(A) per layer, zero on uncovered parameters (float64, [n]).</summary>
    public Tensor Diagonal()
    {
        var d = zeros(Size, dtype: ScalarType.Float64, device: Device);
        using var scope = NewDisposeScope();
        var offsets = Objective.Parameters.Offsets;
        foreach (var b in _blocks)
        {
            long outDim = b.Layer.OutputDimension, inW = b.Layer.InputDimension - (b.Bias >= 0 ? 1 : 0);
            var outer = b.G.diagonal().unsqueeze(1) * b.A.diagonal().unsqueeze(0);
            d.narrow(0, offsets[b.Weight], outDim * inW).copy_(outer.narrow(1, 0, inW).reshape(-1));
            if (b.Bias >= 0) d.narrow(0, offsets[b.Bias], outDim).copy_(outer.narrow(1, inW, 1).reshape(-1));
        }
        return d;
    }

    /// <inheritdoc/>
    /// <remarks>Always <see cref="Diagonal"/>.</remarks>
    public Tensor? ExactDiagonal(CancellationToken ct = default) => Diagonal();

    /// <summary>Frees the factors.</summary>
    public void Dispose()
    {
        foreach (var b in _blocks)
        {
            b.A.Dispose();
            b.G.Dispose();
        }
    }
}
