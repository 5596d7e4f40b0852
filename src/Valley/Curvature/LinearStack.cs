using TorchSharp;
using TorchSharp.Modules;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Curvature;

/// <summary>How an objective computes Hessian-vector products (<see cref="ObjectiveOptions.HessianProducts"/>).</summary>
public enum HessianProductMethod
{
    /// <summary>
    /// By the R-operator propagated layer by layer when the model is a stack of Linear layers and elementwise activations
    /// (Valley's <see cref="Mlp"/>, or a <c>Sequential</c> of Linear, Tanh, ReLU and Sigmoid) under cross-entropy, MSE or
    /// binary cross-entropy; by double backward through autograd for every other model and loss.
    /// </summary>
    Auto,

    /// <summary>Always through autograd: double backward for the Hessian, the double-vjp trick for the GGN.</summary>
    DoubleBackward,
}

/// <summary>
/// Exact Hessian-vector products of a feed-forward stack of Linear layers and elementwise activations, by Pearlmutter's
/// R-operator (Pearlmutter 1994, "Fast exact multiplication by the Hessian", §4) propagated with explicit matrix products
/// instead of autograd's double backward. With z_l = a_{l-1} W_lᵀ + b_l, a_l = σ(z_l), f = z_L and δ_l = ∂L_B/∂z_l, the
/// directional derivatives along (V_l, c_l) are
/// <code>
///   R z_l = R a_{l-1} W_lᵀ + a_{l-1} V_lᵀ + c_l,       R a_l = σ'(z_l) ⊙ R z_l,       R a_0 = 0
///   R δ_L = ∇²_f L_B · R f
///   R δ_l = (R δ_{l+1} W_{l+1} + δ_{l+1} V_{l+1}) ⊙ σ'(z_l) + (δ_{l+1} W_{l+1}) ⊙ σ''(z_l) ⊙ R z_l
///   (H v)_{W_l} = R δ_lᵀ a_{l-1} + δ_lᵀ R a_{l-1},     (H v)_{b_l} = Σ_batch R δ_l
/// </code>
/// Everything that does not depend on v (a_l, σ'(z_l), δ_l, (δ_{l+1} W_{l+1}) ⊙ σ''(z_l) and the output curvature) depends on
/// the weights only and is kept between products (<see cref="Batch"/>). A product then costs, per batch, the two matrix
/// products with the batch's inputs (X V_1ᵀ and R δ_1ᵀ X) and small ones for the later layers, and a block of k vectors
/// shares them as one wider product each. Autograd's double backward performs the same two large products, but with the
/// bookkeeping of a graph of a few dozen nodes per batch and product.
/// </summary>
internal sealed class LinearStack
{
    enum Activation { None, Tanh, ReLU, Sigmoid, Gelu }

    /// <summary>One Linear layer, the activation after it (None for the last), and its parameters' indices in the objective's
    /// parameter set (-1 when a parameter is not selected or absent).</summary>
    sealed record Layer(Tensor Weight, Tensor? Bias, int WeightIndex, int BiasIndex, Activation After);

    readonly Layer[] _layers;
    readonly OutputLossKind _loss;
    readonly bool _flatten;

    LinearStack(Layer[] layers, OutputLossKind loss, bool flatten)
    {
        _layers = layers;
        _loss = loss;
        _flatten = flatten;
    }

    /// <summary>
    /// The stack of an objective's model, or null when the model, the loss or the selection is not one this class computes
    /// (the objective then uses double backward). Every parameter the objective selects must belong to one of the Linear layers.
    /// </summary>
    public static LinearStack? TryCreate(Objective objective)
    {
        var loss = OutputPasses.KindOf(objective.Loss);
        if (loss == OutputLossKind.Other) return null;
        var dtype = objective.Parameters.DType;
        if (dtype != ScalarType.Float32 && dtype != ScalarType.Float64) return null;
        List<nn.Module<Tensor, Tensor>> modules;
        bool flatten;
        switch (objective.Model)
        {
            case Mlp mlp:
                modules = mlp.Layers.ToList();
                flatten = true;
                break;
            // Sequential itself only: a subclass may override forward (a residual connection, a scale) and is not a chain.
            case Sequential seq when seq.GetType() == typeof(Sequential):
                modules = [];
                foreach (var (_, child) in seq.named_children())
                {
                    if (child is not nn.Module<Tensor, Tensor> m) return null;
                    modules.Add(m);
                }
                flatten = false;
                // A Sequential applies Linear to the last dimension of any input; only [N, d] inputs are handled here.
                if (objective.Source is not Data.Dataset { X: var x } || x.dim() != 2) return null;
                break;
            default:
                return null;
        }
        var index = new Dictionary<IntPtr, int>();
        for (int i = 0; i < objective.Parameters.Tensors.Count; i++) index[objective.Parameters.Tensors[i].Handle] = i;
        var layers = new List<Layer>();
        int covered = 0;
        for (int i = 0; i < modules.Count; i++)
        {
            if (modules[i] is not Linear linear) return null;
            var act = Activation.None;
            if (i + 1 < modules.Count && modules[i + 1] is not Linear)
            {
                Activation? a = modules[++i] switch
                {
                    Tanh => Activation.Tanh,
                    ReLU => Activation.ReLU,
                    Sigmoid => Activation.Sigmoid,
                    // The exact (erf) form only; the tanh approximation has other derivatives.
                    GELU { approximate: GELU.Approximate.none } => Activation.Gelu,
                    _ => null,
                };
                if (a is null) return null;
                act = a.Value;
            }
            var w = linear.weight;
            if (w is null) return null;
            var b = linear.bias;
            int wi = index.GetValueOrDefault(w.Handle, -1), bi = b is null ? -1 : index.GetValueOrDefault(b.Handle, -1);
            covered += (wi >= 0 ? 1 : 0) + (bi >= 0 ? 1 : 0);
            layers.Add(new Layer(w, b, wi, bi, act));
        }
        if (layers.Count == 0 || layers[^1].After != Activation.None) return null;
        // A forward hook changes what the model computes, and the R-passes do not call the modules.
        if (HasHooks(objective.Model)) return null;
        // A selected parameter outside the Linear layers (none in these models, but a subclass could add one) is not handled.
        if (covered != objective.Parameters.Tensors.Count) return null;
        return new LinearStack(layers.ToArray(), loss, flatten);
    }

    /// <summary>Bytes of state a kept chunk may hold (<see cref="ChunkRows"/>); 32 MiB (tests lower it to get several chunks).</summary>
    internal long ChunkBytes { get; set; } = 32L << 20;

    /// <summary>Bytes the temporaries of one product pass over a chunk may take (<see cref="VectorsPerPass"/>); 256 MiB.</summary>
    internal long PassBytes { get; set; } = 256L << 20;

    // Values kept per example: for every hidden layer its output a, σ', δ and the δ-curvature; δ and the output curvature of
    // the last layer. The first layer's inputs are the data set's own rows.
    long KeptPerRow => _layers.Take(_layers.Length - 1).Sum(l => 4 * l.Weight.shape[0]) + 2 * _layers[^1].Weight.shape[0];

    // A chunk's inputs, which it holds too (a view of the data set's rows on the CPU, a copy on another device).
    long InputPerRow => _layers[0].Weight.shape[1];

    // Values one vector's R-pass makes per example, counted generously: R z, R a, R δ, R g and the products and copies
    // they are made from, about eight per layer width.
    internal long PassPerRow => _layers.Sum(l => 8 * l.Weight.shape[0]);

    /// <summary>
    /// Rows per chunk: the data pass over chunks, not over the objective's batches, because a chunk keeps a few numbers per
    /// example and per layer (no autograd graph), and fewer, larger chunks mean fewer library calls and wider matrix
    /// products (on mlp:784-128-64-10, one chunk of 2,048 rows instead of four batches of 512 saves about a fifth of a
    /// product). At least <paramref name="batchSize"/> rows, and as many more as keep a chunk's state and inputs within
    /// <see cref="ChunkBytes"/>, and within <paramref name="budget"/> (the graph cache's, when smaller: a budget for a few
    /// batches then still keeps some).
    /// </summary>
    public long ChunkRows(long batchSize, int elementSize, long? budget = null) =>
        Math.Max(batchSize, Math.Min(ChunkBytes, budget is > 0 ? budget.Value : long.MaxValue) / ((KeptPerRow + InputPerRow) * elementSize));

    /// <summary>Whether the model or any module in it has a forward hook or pre-hook (TorchSharp keeps them in protected
    /// dictionaries; where they cannot be read, the model counts as hooked).</summary>
    static bool HasHooks(nn.Module model)
    {
        const System.Reflection.BindingFlags Flags = System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public;
        foreach (var m in model.modules().Prepend(model))
        {
            var t = m.GetType();
            while (t is not null && !(t.IsGenericType && t.Name.StartsWith("HookableModule", StringComparison.Ordinal))) t = t.BaseType;
            if (t is null) continue; // a module without hooks
            foreach (var name in HookFields)
                if (t.GetField(name, Flags)?.GetValue(m) is not System.Collections.ICollection hooks || hooks.Count > 0) return true;
        }
        return false;
    }

    static readonly string[] HookFields = ["pre_hooks", "post_hooks", "module_pre_hooks", "module_post_hooks"];

    /// <summary>Vectors of a block one pass over a chunk of <paramref name="rows"/> takes at a time, so that its
    /// temporaries stay within <see cref="PassBytes"/>.</summary>
    public int VectorsPerPass(long rows, int elementSize) => (int)Math.Clamp(PassBytes / Math.Max(1, rows * PassPerRow * elementSize), 1, int.MaxValue);

    /// <summary>
    /// What one batch's products need at the current weights: the layers' inputs a_{l-1}, and for the hidden layers σ'(z_l),
    /// δ_l and (δ_{l+1} W_{l+1}) ⊙ σ''(z_l); the output curvature (softmax probabilities or σ(1−σ)); the batch's size.
    /// </summary>
    public sealed class Batch(Tensor[] inputs, Tensor?[] slopes, Tensor[] deltas, Tensor?[] curvatures, Tensor? output, long size, long outputs, double weight, long? rows = null)
    {
        public Tensor[] Inputs { get; } = inputs;
        public Tensor?[] Slopes { get; } = slopes;
        public Tensor[] Deltas { get; } = deltas;
        public Tensor?[] Curvatures { get; } = curvatures;
        public Tensor? Output { get; } = output;
        /// <summary>|B|, the number of examples the batch's mean loss averages over.</summary>
        public long Size { get; } = size;
        /// <summary>Rows the tensors hold: <see cref="Size"/>, or fewer for a view of some rows (<see cref="Rows"/>).</summary>
        public long RowCount { get; } = rows ?? size;
        public long Outputs { get; } = outputs;
        /// <summary>The batch's weight |B|/N in the objective, folded into δ and into the output curvature's products.</summary>
        public double Weight { get; } = weight;

        /// <summary>Every tensor the batch holds, for a cache that keeps it beyond its dispose scope. None may be a tensor the
        /// data source yielded (it disposes those when the pass moves on): the inputs are a view of their own.</summary>
        public Tensor[] Tensors() =>
            Inputs.Concat(Slopes.OfType<Tensor>()).Concat(Deltas).Concat(Curvatures.OfType<Tensor>()).Concat(Output is null ? [] : [Output]).ToArray();

        /// <summary>Rows [start, start + count) of the batch, as views (the weight stays the batch's).</summary>
        public Batch Rows(long start, long count) => start == 0 && count == RowCount ? this : new Batch(
            Inputs.Select(t => t.narrow(0, start, count)).ToArray(), Slopes.Select(t => t?.narrow(0, start, count)).ToArray(),
            Deltas.Select(t => t.narrow(0, start, count)).ToArray(), Curvatures.Select(t => t?.narrow(0, start, count)).ToArray(),
            Output?.narrow(0, start, count), Size, Outputs, Weight, count);

        /// <summary>Bytes of the tensors the batch adds (the inputs of the first layer are the data set's own memory).</summary>
        public long Bytes() => Tensors().Skip(1).Sum(t => t.numel() * t.element_size());
    }

    /// <summary>
    /// The forward and backward pass of one batch (model dtype and device; <paramref name="y"/> as the loss takes it),
    /// without autograd, for the objective's loss with this batch weighted by <paramref name="weight"/> (|B|/N): δ_l and every
    /// product of the batch carry the weight, so products add into the full-data result as they are.
    /// <paramref name="checkOutputs"/> sees the outputs before the loss's derivative is formed from them.
    /// </summary>
    public Batch Prepare(Tensor x, Tensor y, double weight, Action<Tensor> checkOutputs)
    {
        using var _ = no_grad();
        long size = x.shape[0];
        int L = _layers.Length;
        var inputs = new Tensor[L];
        var slopes = new Tensor?[L];
        var second = new Tensor?[L];
        if (x.dim() < 2 || (!_flatten && x.dim() != 2))
            throw new ValleyException($"inputs of shape [{string.Join(", ", x.shape)}]: the model's first Linear layer needs [examples, features]");
        // A new handle (a view) for the first layer's input, so that the cache does not hold the batch loop's own tensor.
        var a = x.reshape(size, -1);
        if (a.shape[1] != _layers[0].Weight.shape[1])
            throw new ValleyException($"inputs have {a.shape[1]} features per example, but the model's first Linear layer takes {_layers[0].Weight.shape[1]}");
        for (int l = 0; l < L; l++)
        {
            inputs[l] = a;
            var z = nn.functional.linear(a, _layers[l].Weight, _layers[l].Bias);
            switch (_layers[l].After)
            {
                case Activation.None:
                    a = z;
                    break;
                case Activation.Tanh:
                    a = z.tanh();
                    slopes[l] = 1 - a * a;
                    second[l] = -2 * a * slopes[l]!;
                    break;
                case Activation.Sigmoid:
                    a = z.sigmoid();
                    slopes[l] = a * (1 - a);
                    second[l] = slopes[l]! * (1 - 2 * a);
                    break;
                case Activation.ReLU:
                    a = z.relu();
                    // relu'(0) = 0 and relu'' = 0, as autograd's threshold backward takes them.
                    slopes[l] = z.gt(0).to(z.dtype);
                    break;
                case Activation.Gelu:
                    a = nn.functional.gelu(z);
                    var phi = (z * z * -0.5).exp() * (1 / Math.Sqrt(2 * Math.PI));
                    var cdf = (z * (1 / Math.Sqrt(2))).erf().add(1).mul(0.5);
                    slopes[l] = cdf + z * phi;
                    second[l] = phi * (2 - z * z);
                    break;
            }
        }
        var f = a;
        checkOutputs(f);
        long perExample = size == 0 ? 0 : f.numel() / size;
        Tensor delta;
        Tensor? curvature = null;
        switch (_loss)
        {
            case OutputLossKind.CrossEntropy:
                curvature = f.softmax(1);
                delta = (curvature - nn.functional.one_hot(y, f.shape[1]).to(f.dtype)) / size;
                break;
            case OutputLossKind.MeanSquaredError:
                delta = (f - Target(f, y)) * (2.0 / (size * perExample));
                break;
            default: // binary cross-entropy with logits
                var s = f.sigmoid();
                curvature = s * (1 - s);
                delta = (s - Target(f, y)) / (size * perExample);
                break;
        }
        var deltas = new Tensor[L];
        var curvatures = new Tensor?[L];
        deltas[L - 1] = delta.mul_(weight);
        for (int l = L - 2; l >= 0; l--)
        {
            var g = deltas[l + 1].matmul(_layers[l + 1].Weight);
            deltas[l] = slopes[l] is { } s1 ? g * s1 : g;
            if (second[l] is { } s2) curvatures[l] = g * s2;
        }
        return new Batch(inputs, slopes, deltas, curvatures, curvature, size, perExample, weight);
    }

    // The loss's own shape rule: targets [B] against outputs [B] or [B, 1] (Losses.SameShape has already checked the shapes).
    static Tensor Target(Tensor f, Tensor y) => f.dim() == 2 && y.dim() == 1 ? y.unsqueeze(1) : y;

    /// <summary>
    /// Adds (|B|/N) H_B V to <paramref name="result"/> [k, n] for a block <paramref name="Vt"/> [k, n] (rows the vectors, in the
    /// parameter set's flat layout), H_B the Hessian of batch B's mean loss and |B|/N the batch's weight. With
    /// <paramref name="gaussNewton"/>, the generalized Gauss-Newton matrix J_Bᵀ ∇²_f L_B J_B instead: the same passes without
    /// the terms of the model's own curvature (δ_{l+1} V_{l+1}, the σ″ term and δ_lᵀ R a_{l−1}), so that R z is J v and the
    /// backward pass is Jᵀ applied to the output curvature's product.
    /// </summary>
    public void AddProduct(Batch batch, Tensor Vt, ParameterSet parameters, Tensor result, bool gaussNewton = false)
    {
        using var _ = no_grad();
        if (Vt.shape[0] == 1)
        {
            AddVectorProduct(batch, Vt, parameters, result, gaussNewton);
            return;
        }
        int k = (int)Vt.shape[0];
        int L = _layers.Length;
        long N = batch.Size;
        // Per layer: V_l as [k, out, in] and c_l as [k, out] (null when not selected).
        var (Vw, Vb) = Parts(p => Slice(Vt, parameters, p, k));
        // Forward R-pass: R z_l as [k, N, width], and R a_{l-1}, the R-input of layer l (none for the first).
        var Rz = new Tensor[L];
        var RaIn = new Tensor?[L];
        for (int l = 0; l < L; l++)
        {
            var layer = _layers[l];
            if (l > 0) RaIn[l] = batch.Slopes[l - 1] is { } s ? Rz[l - 1] * s : Rz[l - 1];
            Tensor? rz = RaIn[l]?.matmul(layer.Weight.t());
            if (Vw[l] is { } V) rz = rz is null ? Many(batch.Inputs[l], V) : rz.add_(Many(batch.Inputs[l], V));
            if (Vb[l] is { } c) rz = rz is null ? c.unsqueeze(1).expand(k, N, c.shape[1]) : rz.add_(c.unsqueeze(1));
            Rz[l] = rz ?? zeros([k, N, layer.Weight.shape[0]], dtype: Vt.dtype, device: Vt.device);
        }
        var rd = OutputCurvature(batch, Rz[L - 1]);
        // Backward R-pass, writing each layer's part of H v as soon as its R δ_l is known.
        for (int l = L - 1; l >= 0; l--)
        {
            var layer = _layers[l];
            if (layer.WeightIndex >= 0)
            {
                // R δ_lᵀ a_{l-1} + δ_lᵀ R a_{l-1}, for the k vectors at once: [k, out, in].
                var hw = ManyT(rd, batch.Inputs[l]);
                if (!gaussNewton && RaIn[l] is { } ra) hw.add_(ManyT2(batch.Deltas[l], ra));
                View(result, parameters, layer.WeightIndex, k).add_(hw);
            }
            if (layer.BiasIndex >= 0) View(result, parameters, layer.BiasIndex, k).add_(rd.sum(1));
            if (l == 0) break;
            // R δ_{l-1} = (R δ_l W_l + δ_l V_l) ⊙ σ'(z_{l-1}) + (δ_l W_l) ⊙ σ''(z_{l-1}) ⊙ R z_{l-1}.
            var rg = rd.matmul(layer.Weight);
            if (!gaussNewton && Vw[l] is { } V) rg.add_(DeltaTimes(batch.Deltas[l], V));
            var below = l - 1;
            rd = batch.Slopes[below] is { } s ? rg.mul_(s) : rg;
            if (!gaussNewton && batch.Curvatures[below] is { } c2) rd.add_(Rz[below] * c2);
        }
    }

    /// <summary>
    /// <see cref="AddProduct"/> for one vector (Lanczos, SLQ): the same passes on [N, width] matrices, with the bias and the
    /// accumulation into <paramref name="result"/> fused into the matrix products (addmm), so that a layer costs a few
    /// library calls rather than a few dozen.
    /// </summary>
    void AddVectorProduct(Batch batch, Tensor Vt, ParameterSet parameters, Tensor result, bool gaussNewton)
    {
        int L = _layers.Length;
        long N = batch.Size;
        var (Vw, Vb) = Parts(p => View(Vt, parameters, p));
        var Rz = new Tensor[L];
        var RaIn = new Tensor?[L];
        for (int l = 0; l < L; l++)
        {
            var layer = _layers[l];
            if (l > 0) RaIn[l] = batch.Slopes[l - 1] is { } s ? Rz[l - 1] * s : Rz[l - 1];
            Tensor? rz = RaIn[l]?.matmul(layer.Weight.t());
            if (Vw[l] is { } V)
                rz = rz is null ? (Vb[l] is { } c0 ? c0.addmm(batch.Inputs[l], V.t()) : batch.Inputs[l].matmul(V.t())) : rz.addmm_(batch.Inputs[l], V.t());
            if (Vb[l] is { } c && (rz is null || Vw[l] is null || RaIn[l] is not null)) rz = rz is null ? c.expand(N, c.shape[0]) : rz.add_(c);
            Rz[l] = rz ?? zeros([N, layer.Weight.shape[0]], dtype: Vt.dtype, device: Vt.device);
        }
        var rd = OutputCurvature(batch, Rz[L - 1]);
        for (int l = L - 1; l >= 0; l--)
        {
            var layer = _layers[l];
            if (layer.WeightIndex >= 0)
            {
                var hw = View(result, parameters, layer.WeightIndex);
                hw.addmm_(rd.t(), batch.Inputs[l]);
                if (!gaussNewton && RaIn[l] is { } ra) hw.addmm_(batch.Deltas[l].t(), ra);
            }
            if (layer.BiasIndex >= 0) View(result, parameters, layer.BiasIndex).add_(rd.sum(0L)); // 0L: a literal 0 would bind to sum(ScalarType)
            if (l == 0) break;
            var rg = rd.matmul(layer.Weight);
            if (!gaussNewton && Vw[l] is { } V) rg.addmm_(batch.Deltas[l], V);
            var below = l - 1;
            rd = batch.Slopes[below] is { } s ? rg.mul_(s) : rg;
            if (!gaussNewton && batch.Curvatures[below] is { } c2) rd.addcmul_(Rz[below], c2, 1);
        }
    }

    /// <summary>
    /// Adds (|B|/N) diag(H_B) to <paramref name="result"/> [n] (the model's dtype), or diag(G_B) with
    /// <paramref name="gaussNewton"/>: exactly, without products. A weight W_l[j, q] enters example i's loss only through
    /// z_l[i, j] = … + W_l[j, q] a_{l-1}[i, q], so ∂²ℓ_i/∂W_l[j, q]² = a_{l-1}[i, q]² · D_l[i, j] with D_l[i, j] = ∂²ℓ_i/∂z_l[i, j]²,
    /// the diagonal of the pre-activations' Hessian (the bias: a = 1). That Hessian obeys the backward recursion of Botev,
    /// Ritter &amp; Barber (2017, "Practical Gauss-Newton optimisation for deep learning", eq. 8; exact per example)
    /// <code>
    ///   ∇²_{z_l} ℓ = diag(σ'(z_l)) W_{l+1}ᵀ ∇²_{z_{l+1}} ℓ W_{l+1} diag(σ'(z_l)) + diag(g_l ⊙ σ''(z_l)),   g_l = ∂ℓ/∂a_l,
    /// </code>
    /// which unrolls into one term per source: the output curvature seen through J_l = ∂f/∂z_l, and each deeper hidden layer
    /// m's σ'' term seen through M = ∂z_m/∂z_l. Only diagonals are needed, so no per-example Hessian is formed:
    /// D_l = diag(J_lᵀ ∇²_f ℓ J_l) + Σ_{m ≥ l} Σ_p (g_m ⊙ σ''_m)[p] M_{pj}², with J_l and M propagated per example as
    /// [rows, width of the source, h_l] (C columns for the output, h_m for layer m, whose first step down needs no per-example
    /// matrix: (r_m W_m^{∘2}) ⊙ σ'²). On mlp:784-128-64-10 this costs about one product's matrix work; the sources of hidden
    /// layers two or more steps above a layer cost rows × h_m × h_{l+1} × h_l more. The GGN keeps the output source only.
    /// Rows go in passes whose temporaries stay within <see cref="PassBytes"/>.
    /// </summary>
    public void AddDiagonal(Batch batch, ParameterSet parameters, Tensor result, bool gaussNewton = false)
    {
        using var _ = no_grad();
        long rows = DiagonalRowsPerPass(batch.RowCount, (int)result.element_size());
        for (long start = 0; start < batch.RowCount; start += rows)
        {
            using var pass = NewDisposeScope();
            AddDiagonalRows(batch.Rows(start, Math.Min(rows, batch.RowCount - start)), parameters, result, gaussNewton);
        }
    }

    void AddDiagonalRows(Batch batch, ParameterSet parameters, Tensor result, bool gaussNewton)
    {
        int L = _layers.Length;
        // D_l [rows, h_l], accumulated in place; every contribution is made and dropped in its own scope, so that a pass
        // holds the D_l and the current source's few matrices, not every matrix it made (DiagonalRowsPerPass).
        var D = _layers.Select(l => zeros([batch.RowCount, l.Weight.shape[0]], dtype: result.dtype, device: result.device)).ToArray();
        void Add(int l, Func<Tensor> contribution)
        {
            using var scope = NewDisposeScope();
            D[l].add_(contribution());
        }
        // The output source: D_{L-1} = diag(∇²_f ℓ), then J_l = (J_{l+1} W_{l+1}) ⊙ σ'(z_l) from J_{L-1} = I.
        double scale = batch.Weight / (_loss == OutputLossKind.CrossEntropy ? batch.Size : batch.Size * batch.Outputs);
        Tensor OutputDiagonal(Tensor J) // J [rows, C, h] → diag(Jᵀ ∇²_f ℓ J) [rows, h]
        {
            switch (_loss)
            {
                case OutputLossKind.CrossEntropy:
                    // Σ_c p_c J_c² − (Σ_c p_c J_c)², in its centred form Σ_c p_c (J_c − J̄)² (Σ p = 1), which does not cancel.
                    var p = batch.Output!.unsqueeze(1);
                    var centred = J - p.bmm(J);
                    return p.bmm(centred.mul_(centred)).squeeze(1).mul_(scale);
                case OutputLossKind.MeanSquaredError:
                    return J.square().sum(1).mul_(2 * scale);
                default:
                    return batch.Output!.unsqueeze(1).bmm(J.square()).squeeze(1).mul_(scale);
            }
        }
        Add(L - 1, () => batch.Output is { } o ? (_loss == OutputLossKind.CrossEntropy ? o * (1 - o) : o.clone()).mul_(scale) : full([batch.RowCount, batch.Outputs], 2 * scale, dtype: result.dtype, device: result.device));
        Propagate(batch, L - 1, OutputDiagonal, Add);
        if (!gaussNewton)
        {
            for (int m = L - 2; m >= 0; m--)
            {
                if (batch.Curvatures[m] is not { } r) continue; // ReLU and no activation: σ'' = 0
                Add(m, () => r);
                if (m == 0) continue;
                // One step down: Σ_p r_p (W_m[p, j] σ'_j)² = (r W_m^{∘2})_j σ'_j², one matrix product for all rows.
                Add(m - 1, () =>
                {
                    var below = r.matmul(_layers[m].Weight.square());
                    return batch.Slopes[m - 1] is { } s ? below.mul_(s.square()) : below;
                });
                if (m == 1) continue;
                var rr = r.unsqueeze(1);
                Propagate(batch, m, M => rr.bmm(M.square()).squeeze(1), Add, skipFirst: true);
            }
        }
        for (int l = 0; l < L; l++)
        {
            using var scope = NewDisposeScope();
            var layer = _layers[l];
            if (layer.WeightIndex >= 0) View(result.unsqueeze(0), parameters, layer.WeightIndex).addmm_(D[l].t(), batch.Inputs[l].square());
            if (layer.BiasIndex >= 0) View(result.unsqueeze(0), parameters, layer.BiasIndex).add_(D[l].sum(0L));
        }
        foreach (var d in D) d.Dispose();
    }

    /// <summary>
    /// Carries a source at layer <paramref name="top"/> down the stack: M = ∂z_top/∂z_l per example, [rows, h_top, h_l],
    /// from M = W_top ⊙ σ'(z_{top-1}) one layer down, and hands each layer's M to <paramref name="diagonal"/>, whose result
    /// [rows, h_l] is added to that layer's D (the first layer down is skipped with <paramref name="skipFirst"/>). Only the
    /// current M (and the next while it is made) is held.
    /// </summary>
    void Propagate(Batch batch, int top, Func<Tensor, Tensor> diagonal, Action<int, Func<Tensor>> add, bool skipFirst = false)
    {
        if (top == 0) return;
        Tensor M;
        using (var first = NewDisposeScope())
        {
            var W = _layers[top].Weight.unsqueeze(0);
            M = (batch.Slopes[top - 1] is { } s0 ? W * s0.unsqueeze(1) : W.expand(batch.RowCount, -1, -1)).MoveToOuterDisposeScope();
        }
        try
        {
            if (!skipFirst) add(top - 1, () => diagonal(M));
            for (int l = top - 2; l >= 0; l--)
            {
                Tensor next;
                using (var step = NewDisposeScope())
                {
                    next = M.matmul(_layers[l + 1].Weight);
                    if (batch.Slopes[l] is { } s) next.mul_(s.unsqueeze(1));
                    next.MoveToOuterDisposeScope();
                }
                M.Dispose();
                M = next;
                add(l, () => diagonal(M));
            }
        }
        finally { M.Dispose(); }
    }

    /// <summary>The exact diagonal is computed only when it costs at most this many products (<see cref="DiagonalCostInProducts"/>);
    /// beyond it the estimators are cheaper at their usual targets (XTrace needs about 40 products for 5 % and 120 for 1 %
    /// on mlp:784-128-64-10).</summary>
    public const double MaxDiagonalProducts = 50;

    /// <summary>
    /// The exact diagonal's multiply-adds per example divided by one product's (about three per weight: X Vᵀ, R δᵀ a and
    /// R δ W): the final D_lᵀ a² products, the output source's J carried down (C × h_{l+1} × h_l per layer) and reduced
    /// (a few passes over C × h_l), and with the Hessian the hidden sources with a σ'' (one step down by one product, further
    /// steps h_m × h_{l+1} × h_l each). On mlp:784-128-64-10 about 0.6.
    /// </summary>
    public double DiagonalCostInProducts(bool gaussNewton)
    {
        int L = _layers.Length;
        double Width(int l) => _layers[l].Weight.shape[0];
        double In(int l) => _layers[l].Weight.shape[1];
        double product = 3 * Enumerable.Range(0, L).Sum(l => Width(l) * In(l));
        double cost = Enumerable.Range(0, L).Sum(l => Width(l) * In(l));
        double C = Width(L - 1);
        for (int l = 0; l < L - 1; l++) cost += 4 * C * Width(l) + (l + 1 < L - 1 ? C * Width(l + 1) * Width(l) : 0);
        if (!gaussNewton)
            for (int m = 1; m < L - 1; m++)
            {
                if (_layers[m].After is Activation.ReLU or Activation.None) continue; // σ'' = 0: no source
                cost += Width(m) * Width(m - 1);
                for (int l = 0; l + 2 <= m; l++) cost += Width(m) * Width(l + 1) * Width(l) + 2 * Width(m) * Width(l);
            }
        return cost / product;
    }

    /// <summary>Rows of a chunk one diagonal pass takes, so that its per-example matrices M [rows, source width, h_l] and the
    /// few temporaries made from them (counted as four) stay within <see cref="PassBytes"/>.</summary>
    long DiagonalRowsPerPass(long rows, int elementSize)
    {
        long Width(int l) => _layers[l].Weight.shape[0];
        long Below(int top) => Enumerable.Range(0, top).Select(Width).DefaultIfEmpty(0).Max();
        // The output source (C columns) and the hidden layers' sources from the third layer up.
        long perRow = Width(_layers.Length - 1) * Below(_layers.Length - 1);
        for (int m = 2; m < _layers.Length - 1; m++) perRow = Math.Max(perRow, Width(m) * Below(m));
        return Math.Clamp(PassBytes / Math.Max(1, 4 * perRow * elementSize), 1, Math.Max(1, rows));
    }

    // Per layer, the direction's part for its weight and for its bias (null where the parameter is not selected).
    (Tensor?[] Weights, Tensor?[] Biases) Parts(Func<int, Tensor> part)
    {
        var w = new Tensor?[_layers.Length];
        var b = new Tensor?[_layers.Length];
        for (int l = 0; l < _layers.Length; l++)
        {
            if (_layers[l].WeightIndex >= 0) w[l] = part(_layers[l].WeightIndex);
            if (_layers[l].BiasIndex >= 0) b[l] = part(_layers[l].BiasIndex);
        }
        return (w, b);
    }

    // R δ_L = (|B|/N) ∇²_f L_B R f for R f [..., N, C] (the batch's mean loss, as OutputBatch.OutputHessian, times its weight).
    Tensor OutputCurvature(Batch batch, Tensor rf)
    {
        double scale = batch.Weight / (_loss == OutputLossKind.CrossEntropy ? batch.Size : batch.Size * batch.Outputs);
        switch (_loss)
        {
            case OutputLossKind.CrossEntropy:
                var p = batch.Output!;
                var prf = p * rf;
                return prf.sub_(p * prf.sum(-1, keepdim: true)).mul_(scale);
            case OutputLossKind.MeanSquaredError:
                return rf * (2 * scale);
            default:
                return (batch.Output! * rf).mul_(scale);
        }
    }

    // A [N, in] times V_lᵀ for k matrices V [k, out, in] as one matrix product: [k, N, out].
    static Tensor Many(Tensor A, Tensor V)
    {
        long k = V.shape[0], o = V.shape[1], i = V.shape[2];
        return A.matmul(V.reshape(k * o, i).t()).view(A.shape[0], k, o).transpose(0, 1);
    }

    // R δ [k, N, out] transposed times A [N, in] for each of the k: [k, out, in], as one matrix product.
    static Tensor ManyT(Tensor rd, Tensor A)
    {
        long k = rd.shape[0], N = rd.shape[1], o = rd.shape[2];
        return rd.transpose(0, 1).reshape(N, k * o).t().matmul(A).view(k, o, A.shape[1]);
    }

    // δ [N, out] transposed times R a [k, N, in]: [k, out, in].
    static Tensor ManyT2(Tensor delta, Tensor Ra)
    {
        long k = Ra.shape[0], N = Ra.shape[1], i = Ra.shape[2];
        return delta.t().matmul(Ra.transpose(0, 1).reshape(N, k * i)).view(delta.shape[1], k, i).transpose(0, 1);
    }

    // δ [N, out] times V [k, out, in] for each of the k: [k, N, in].
    static Tensor DeltaTimes(Tensor delta, Tensor V)
    {
        long k = V.shape[0], o = V.shape[1], i = V.shape[2];
        return delta.matmul(V.transpose(0, 1).reshape(o, k * i)).view(delta.shape[0], k, i).transpose(0, 1);
    }

    // Parameter p's part of the rows of a [k, n] block, shaped [k, ...p's shape].
    static Tensor Slice(Tensor block, ParameterSet parameters, int p, int k) =>
        block.narrow(1, parameters.Offsets[p], parameters.Tensors[p].numel()).reshape([k, .. parameters.Shapes[p]]);

    static Tensor View(Tensor block, ParameterSet parameters, int p, int k) =>
        block.narrow(1, parameters.Offsets[p], parameters.Tensors[p].numel()).view([k, .. parameters.Shapes[p]]);

    // Parameter p's part of a single row [1, n], as a view of p's shape.
    static Tensor View(Tensor row, ParameterSet parameters, int p) =>
        row.narrow(1, parameters.Offsets[p], parameters.Tensors[p].numel()).view(parameters.Shapes[p]);
}
