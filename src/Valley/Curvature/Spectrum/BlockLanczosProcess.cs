using MathNet.Numerics.LinearAlgebra;
using TorchSharp;
using static TorchSharp.torch;

namespace Valley.Curvature.Spectrum;

/// <summary>
/// The state of one block Lanczos process (Golub and Underwood 1977): an orthonormal basis (rows, float64, grown in chunks),
/// the diagonal blocks A_j = Q_jᵀ A Q_j and the couplings B_j of A Q_j = Q_{j-1} B_{j-1}ᵀ + Q_j A_j + Q_{j+1} B_j. Each new
/// block is fully reorthogonalized against the whole basis and the locked vectors (<see cref="Reorthogonalization"/>).
/// Rank-deficient blocks (an exhausted invariant subspace) are refilled with random vectors orthogonal to the basis, so
/// the process never stalls before the basis spans the whole space. Every block has b rows except, when b does not divide
/// the space, the last one, which completes the basis.
/// </summary>
internal sealed class BlockLanczosProcess : IDisposable
{
    readonly ProductBudget _budget;
    readonly int _b;
    readonly Tensor? _locked;
    readonly Generator _gen;
    readonly long _n;
    readonly Device _device;
    readonly KrylovStorage _storage;
    readonly bool _ownsStorage;
    // [capacity, n] float64, rows are orthonormal vectors
    Tensor BasisBuffer { get => _storage.Basis!; set => _storage.Basis = value; }
    // A Q_j for every block stepped, [s_j, n] float64, as ProductBudget returned them (not copied into a preallocated block), when kept
    readonly List<Tensor>? _products;
    long _rows;             // rows in use (T size + b for the next block)
    readonly List<int> _sizes = [];           // rows of each appended block: b, and the last one possibly fewer
    readonly List<double[,]> _diag = [];      // A_j, s_j × s_j
    readonly List<double[,]> _coupling = [];  // B_j, s_{j+1} × s_j (0 × s_j once the basis spans the space)
    double _normEst;

    /// <param name="keepImages">Keep every product A q_i (as much memory again as the basis), so that A y for any Ritz
    /// vector y = Q s is W s by linearity and the final residuals need no further products.</param>
    /// <param name="storage">Memory for the basis, from an earlier process of the same size on the same device, reused (its rows
    /// are overwritten) and grown as needed; it stays the caller's. Null: the process's own.</param>
    public BlockLanczosProcess(ProductBudget budget, long n, Device device, int blockSize, Tensor? locked, Generator gen, bool keepImages = false,
        KrylovStorage? storage = null)
    {
        _budget = budget;
        _b = blockSize;
        _locked = locked?.to(ScalarType.Float64).DetachFromDisposeScope();
        _gen = gen;
        _n = n;
        _device = device;
        _ownsStorage = storage is null;
        _storage = storage ?? new KrylovStorage();
        if (keepImages) _products = [];
        // Uninitialized: rows are written before they are read, and zero-filling tens of MB costs more than a small model's product.
        long capacity = Math.Min(_n, 32L * blockSize);
        if (!_storage.Fits(capacity, n, device))
        {
            _storage.Dispose();
            _storage.Basis = empty([capacity, _n], dtype: ScalarType.Float64, device: device).DetachFromDisposeScope();
        }
    }

    /// <summary>
    /// A Y for the vectors Y = C Q [k, n] with coefficient rows <paramref name="coefficients"/> [k, m] over the first m =
    /// <see cref="TridiagonalSize"/> basis vectors, from the kept products (A Q C-rows = C W by linearity); null when the
    /// products are not kept.
    /// </summary>
    public Tensor? ImagesOf(Tensor coefficients)
    {
        if (_products is null) return null;
        long k = coefficients.shape[0];
        var result = zeros([k, _n], dtype: ScalarType.Float64, device: _device);
        // Blocks are summed in groups of at least k rows, each one (k × g)·(g × n) product: the k × n result is then read and
        // written once per group rather than once per block, which for many Ritz vectors would cost more than the group's copy.
        var group = new List<Tensor>();
        long start = 0, rows = 0;
        void Flush()
        {
            if (group.Count == 0) return;
            using var scope = NewDisposeScope();
            result.addmm_(coefficients.narrow(1, start, rows), group.Count == 1 ? group[0] : cat(group, 0));
            start += rows;
            rows = 0;
            group.Clear();
        }
        foreach (var W in _products)
        {
            group.Add(W);
            rows += W.shape[0];
            if (rows >= k) Flush();
        }
        Flush();
        return result;
    }

    /// <summary>Size of the block tridiagonal matrix built so far.</summary>
    public int TridiagonalSize => _sizes.Take(_diag.Count).Sum();

    /// <summary>Rows of the last block stepped (b, or fewer for a last block that completes the basis).</summary>
    public int LastBlockSize => _sizes[_diag.Count - 1];

    long Space => _n - LockedCount;

    /// <summary>The first <paramref name="rows"/> basis vectors (a view).</summary>
    public Tensor Basis(long rows) => BasisBuffer.narrow(0, 0, rows);

    /// <summary>Starts from the orthonormalized rows of <paramref name="x0"/> [b, n].</summary>
    public void Start(Tensor x0)
    {
        using var scope = NewDisposeScope();
        Append(Orthonormalize(x0.to(ScalarType.Float64).to(_device)));
    }

    /// <summary>One step: b products, the next diagonal block and coupling, and the next block of the basis.</summary>
    public void Step()
    {
        using var scope = NewDisposeScope();
        int j = _diag.Count;
        if (j >= _sizes.Count) throw new InvalidOperationException("the basis spans the whole space: there is no block left to step");
        int size = _sizes[j];
        long j0 = _sizes.Take(j).Sum();
        var Q = BasisBuffer.narrow(0, j0, size);
        var W = _budget.Apply(Q.t()).t().contiguous(); // rows: A q_i
        // Kept as it came (the steps below make new tensors from it, and the operator does not keep or change what it
        // returned: ICurvatureOperator's contract): a copy into a preallocated block would touch as much fresh memory again.
        _products?.Add(W.DetachFromDisposeScope());
        // The three-term recurrence first (W − Q_j A_j − Q_{j-1} B_{j-1}ᵀ, cheap: 2b vectors), then Gram-Schmidt against the
        // whole basis and the locked vectors. After the recurrence the full pass removes only rounding-level components, so
        // the DGKS criterion rarely asks for a second pass over the basis, whose reads dominate the step for small models.
        if (size == 1 && (_coupling.Count == 0 || _sizes[j - 1] == 1))
        {
            // Single vectors (every step of the default b = 1): α = q·w and w − α q − β q_prev as scalar multiply-adds, one
            // library call each instead of the block form's small matrix products (about 0.7 ms a step at n = 109,386).
            double alpha = Q.reshape(-1).dot(W.reshape(-1)).ToDouble();
            _diag.Add(new[,] { { alpha } });
            _normEst = Math.Max(_normEst, Math.Abs(alpha));
            W = W.add(Q, alpha: -alpha);
            if (_coupling.Count > 0) W.add_(BasisBuffer.narrow(0, j0 - 1, 1), alpha: -_coupling[^1][0, 0]);
        }
        else
        {
            var A = Q.matmul(W.t());
            A = (A + A.t()) / 2;
            _diag.Add(SpectrumMath.ToArray(A));
            _normEst = Math.Max(_normEst, A.abs().max().ToDouble());
            W = W - A.matmul(Q);
            if (_coupling.Count > 0)
            {
                // Row form of A Q_j's Q_{j-1} B_{j-1}ᵀ term: B_{j-1} (s_j × s_{j-1}) times the previous block's rows.
                var prev = _coupling[^1];
                int before = _sizes[j - 1];
                var B = Data.OwnedTensor.From(prev.Cast<double>().ToArray(), size, before).to(_device);
                W = W - B.matmul(BasisBuffer.narrow(0, j0 - before, before));
            }
        }
        (W, var norms) = Reorthogonalization.Dgks(W, RemoveProjection(BasisBuffer.narrow(0, 0, _rows)));
        // W = Rᵀ Q_next in row form, row by row: each row of W orthogonalized against the new rows before it (classical
        // Gram-Schmidt twice) and normalized, R[i, c] = q_i · w_c. A row with nothing left (the Krylov space is exhausted in
        // that direction: deflation) becomes a fresh random direction orthogonal to the basis and the rows before it, and
        // the rows after it are orthogonalized against that one too, so that W = Rᵀ Q_next still holds exactly and T stays
        // QᵀAQ. (A QR of Wᵀ cannot do this: past a deflated column its Householder vector is rounding noise, and zeroing its
        // row of R drops the later columns' components along it.)
        // The next block has b rows, or as many as the space has left (W is orthogonal to the basis, so it lies in what is left).
        int capacity = (int)Math.Min(_b, Space - _rows);
        var R = new double[capacity, size];
        double threshold = 1e-10 * Math.Max(_normEst, 1e-300);
        double first = size == 1 && capacity == 1 ? norms.ToDouble() : 0; // the norm Gram-Schmidt measured last
        // b = 1 and nothing exhausted (nearly every step of the default): the normalized row itself, without the block's copies.
        var next = first > threshold ? W / first : zeros([capacity, _n], dtype: ScalarType.Float64, device: _device);
        if (first > threshold) R[0, 0] = first;
        else for (int c = 0; c < size; c++)
        {
            // Rows of the next block so far: one per row of W until the space is used up.
            int k = Math.Min(c, capacity);
            var w = W.narrow(0, c, 1);
            if (k > 0)
            {
                var made = next.narrow(0, 0, k);
                var h1 = made.matmul(w.t());
                w = w - h1.t().matmul(made);
                var h2 = made.matmul(w.t());
                w = w - h2.t().matmul(made);
                var h = SpectrumMath.ToArray(h1 + h2);
                for (int i = 0; i < k; i++) R[i, c] = h[i, 0];
            }
            if (k == capacity) continue; // the rows made span what is left: nothing of w remains
            double norm = w.norm().ToDouble();
            if (norm > threshold)
            {
                R[k, c] = norm;
                next[k] = (w / norm)[0];
            }
            else
            {
                // Deflation: R[k, c] = 0 and a fresh direction from what is left of the space.
                var fresh = randn([1, _n], dtype: ScalarType.Float64, generator: _gen).to(_device);
                var others = k == 0 ? BasisBuffer.narrow(0, 0, _rows) : cat([BasisBuffer.narrow(0, 0, _rows), next.narrow(0, 0, k)], 0);
                next[k] = Orthonormalize(fresh, others)[0];
            }
        }
        _coupling.Add(R);
        if (capacity > 0) Append(next);
    }

    long LockedCount => _locked?.shape[0] ?? 0;

    /// <summary>B_j of the last step (b × b, or fewer rows for a last block): the residual coupling to the next block. Not
    /// defined once the basis spans the space (there is no next block).</summary>
    public Matrix<double> LastCoupling() => Matrix<double>.Build.DenseOfArray(_coupling[^1]);

    /// <summary>The block tridiagonal T = Qᵀ A Q of the blocks stepped so far.</summary>
    public double[,] Tridiagonal()
    {
        int m = TridiagonalSize;
        var t = new double[m, m];
        int o = 0;
        for (int j = 0; j < _diag.Count; j++)
        {
            int size = _sizes[j];
            for (int r = 0; r < size; r++)
                for (int c = 0; c < size; c++)
                    t[o + r, o + c] = _diag[j][r, c];
            if (j + 1 < _diag.Count)
            {
                // A Q_j has Q_{j+1} B_j: T[j+1 block, j block] = B_j, and its transpose above the diagonal.
                for (int r = 0; r < _sizes[j + 1]; r++)
                    for (int c = 0; c < size; c++)
                    {
                        t[o + size + r, o + c] = _coupling[j][r, c];
                        t[o + c, o + size + r] = _coupling[j][r, c];
                    }
            }
            o += size;
        }
        return t;
    }

    /// <summary>One classical Gram-Schmidt pass of rows against <paramref name="basis"/> and the locked vectors.</summary>
    Func<Tensor, Tensor> RemoveProjection(Tensor? basis) => x =>
    {
        if (basis is not null && basis.shape[0] > 0) x = x - basis.matmul(x.t()).t().matmul(basis);
        if (_locked is not null) x = x - _locked.matmul(x.t()).t().matmul(_locked);
        return x;
    };

    Tensor Orthonormalize(Tensor x, Tensor? against = null)
    {
        Tensor norms;
        (x, norms) = Reorthogonalization.Dgks(x, RemoveProjection(against ?? (_rows > 0 ? BasisBuffer.narrow(0, 0, _rows) : null)));
        // One row (b = 1, every default run): its normalization, without a QR factorization (about 1 ms at n = 10⁵).
        if (x.shape[0] == 1) return x / norms.unsqueeze(1);
        var (q, _) = linalg.qr(x.t());
        return q.t().contiguous();
    }

    void Append(Tensor rows)
    {
        long k = rows.shape[0];
        if (_rows + k > BasisBuffer.shape[0])
        {
            long cap = Math.Min(_n, Math.Max(BasisBuffer.shape[0] * 2, _rows + k));
            BasisBuffer = Grown(BasisBuffer, cap);
        }
        BasisBuffer.narrow(0, _rows, k).copy_(rows);
        _rows += k;
        _sizes.Add((int)k);
    }

    /// <summary>A buffer of <paramref name="rows"/> rows holding the used rows of <paramref name="old"/>, which is disposed.</summary>
    Tensor Grown(Tensor old, long rows)
    {
        var bigger = empty([rows, _n], dtype: old.dtype, device: old.device);
        bigger.narrow(0, 0, _rows).copy_(old.narrow(0, 0, _rows));
        old.Dispose();
        return bigger.DetachFromDisposeScope();
    }

    public void Dispose()
    {
        if (_ownsStorage) _storage.Dispose();
        if (_products is not null) foreach (var W in _products) W.Dispose();
        _locked?.Dispose();
    }
}

/// <summary>
/// The memory of a Krylov basis, handed from one <see cref="BlockLanczosProcess"/> to the next within one computation
/// (Lanczos' multiplicity probes after its main run). A fresh buffer of tens of MB costs page faults on first touch (up to
/// several ms per 2 MB huge page on the development machine, `fault-probe`), more than a probe's own work; a reused one does not.
/// </summary>
internal sealed class KrylovStorage : IDisposable
{
    /// <summary>[capacity, n] float64 basis rows, or null before the first process.</summary>
    public Tensor? Basis { get; set; }

    /// <summary>Whether the buffer exists with at least <paramref name="rows"/> rows of size <paramref name="n"/> on the device.</summary>
    public bool Fits(long rows, long n, Device device) =>
        Basis is { } t && t.shape[0] >= rows && t.shape[1] == n && t.device_type == device.type && (device.index < 0 || t.device_index == device.index);

    public void Dispose()
    {
        Basis?.Dispose();
        Basis = null;
    }
}
