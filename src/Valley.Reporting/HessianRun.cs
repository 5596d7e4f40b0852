using System.Runtime.InteropServices;
using System.Text.Json;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Distributed;
using Valley.IO;
using Valley.Runs;

namespace Valley.Reporting;

/// <summary>
/// What hessian.json holds: a description of the run, its inputs by content (<see cref="RunInputs"/>: a rerun into the same
/// folder resumes only from a report of identical inputs) and the report (null until the first estimator finished).
/// </summary>
/// <param name="Model">The model, as its maker names it (e.g. a spec such as "mlp:784-128-10").</param>
/// <param name="Weights">The weights file, if any.</param>
/// <param name="Data">The data's name.</param>
/// <param name="Examples">Examples the loss is averaged over (all ranks').</param>
/// <param name="Parameters">Parameters the Hessian is taken over.</param>
/// <param name="Layer">The parameter selection, if any.</param>
/// <param name="DType">The dtype of the products.</param>
/// <param name="Seed">The seed.</param>
/// <param name="Threads">LibTorch threads.</param>
/// <param name="Inputs">The run's inputs by content.</param>
/// <param name="Report">The results so far.</param>
public sealed record HessianOutput(string Model, string? Weights, string Data, long Examples, long Parameters, string? Layer, string DType, long Seed, int Threads,
    RunInputs Inputs, SpectrumReport? Report = null)
{
    /// <summary>The curvature operator the report is of: "hessian", "ggn", "ef", "mc-fisher" or "kfac" (<see cref="CurvatureOperators.Names"/>).</summary>
    public string Operator { get; init; } = "hessian";

    /// <summary>K-FAC only: the selected parameters no covered layer holds (the approximation is zero on them).</summary>
    public IReadOnlyList<string>? UncoveredParameters { get; init; }

    /// <summary>K-FAC only: which expectation its output-gradient factor G is, in words (<see cref="KfacOperator.ExpectationDescription"/>).</summary>
    public string? KfacExpectation { get; init; }

    /// <summary>The Hessian and GGN operators: how their products were computed (<see cref="Objective.ProductMethodDescription"/>).</summary>
    public string? HessianProducts { get; init; }

    /// <summary>The diagonal's per-parameter summary, when asked for (the entries are in diagonal.csv).</summary>
    public DiagonalSummary? Diagonal { get; init; }

    /// <summary>The Frobenius norm, when asked for.</summary>
    public FrobeniusEstimate? Frobenius { get; init; }

    /// <summary>The options <see cref="Diagonal"/> was computed with (a rerun keeps a diagonal of the same options only).</summary>
    public DiagonalOptions? DiagonalOptions { get; init; }

    /// <summary>The options <see cref="Frobenius"/> (or <see cref="FrobeniusProgress"/>) was computed with.</summary>
    public FrobeniusOptions? FrobeniusOptions { get; init; }

    /// <summary>An unfinished Frobenius estimate's probes so far, from which a rerun of the same inputs continues.</summary>
    public FrobeniusCheckpoint? FrobeniusProgress { get; init; }
}

/// <summary>One parameter tensor's part of an operator's diagonal.</summary>
/// <param name="Parameter">The parameter's name.</param>
/// <param name="Count">Its entries.</param>
/// <param name="Sum">The sum of its diagonal entries (its block's trace).</param>
/// <param name="Mean">Their mean.</param>
/// <param name="Min">The smallest entry.</param>
/// <param name="Max">The largest entry.</param>
/// <param name="RmsStandardError">The root-mean-square of the entries' standard errors (0 for an exact diagonal).</param>
public sealed record DiagonalBlock(string Parameter, long Count, double Sum, double Mean, double Min, double Max, double RmsStandardError);

/// <summary>A diagonal estimate summarized by parameter tensor (the entries themselves go to diagonal.csv).</summary>
/// <param name="Method">"exact", "hutchinson", "xdiag" or "kfac-factors".</param>
/// <param name="Probes">Random probes.</param>
/// <param name="Products">Operator products.</param>
/// <param name="Seconds">Wall-clock time.</param>
/// <param name="Blocks">One summary per parameter tensor, in the model's order.</param>
public sealed record DiagonalSummary(string Method, int Probes, long Products, double Seconds, IReadOnlyList<DiagonalBlock> Blocks)
{
    /// <summary>Summarizes an estimate by the parameter tensors of <paramref name="parameters"/>.</summary>
    public static DiagonalSummary Of(DiagonalEstimate d, ParameterSet parameters)
    {
        var blocks = new List<DiagonalBlock>();
        for (int p = 0; p < parameters.Names.Count; p++)
        {
            int off = (int)parameters.Offsets[p], count = (int)parameters.Tensors[p].numel();
            var values = new ArraySegment<double>(d.Diagonal, off, count);
            var se = new ArraySegment<double>(d.StandardErrors, off, count);
            blocks.Add(new DiagonalBlock(parameters.Names[p], count, values.Sum(), values.Average(), values.Min(), values.Max(), Math.Sqrt(se.Average(e => e * e))));
        }
        return new DiagonalSummary(d.Method, d.Probes, d.Products, d.Seconds, blocks);
    }
}

/// <summary>
/// A resumable Hessian spectrum run in an output folder: <see cref="SpectrumAnalysis"/> with hessian.json rewritten after
/// every estimator, and the density as density.csv (the broadened density), density-nodes.csv (the quadrature nodes and
/// weights) and density.png; then the diagonal (diagonal.csv) and the Frobenius norm, whose probes so far are saved after
/// every block of products (the Frobenius norm's in hessian.json, the diagonal's in diagonal-progress.bin). A run into a
/// folder whose hessian.json holds a report of the same inputs keeps its finished estimators, continues an unfinished
/// diagonal or Frobenius norm from its saved probes (the result is that of an uninterrupted run) and computes only the
/// rest; a folder holding another run's results is cleared first. With a process group, rank 0 reads, decides and
/// writes, and every rank resumes from what rank 0 broadcasts (ranks deciding apart would run different estimators and
/// wait forever for each other's products). The caller keeps other processes out of the folder (the valley command holds
/// a lock file).
/// </summary>
public sealed class HessianRun
{
    /// <summary>The report's file name.</summary>
    public const string JsonFile = "hessian.json";

    /// <summary>The files a run writes besides hessian.json; an earlier run's are removed when a run of other inputs starts.</summary>
    public static readonly IReadOnlyList<string> DensityFiles = ["density.csv", "density-nodes.csv", "density.png"];

    /// <summary>The diagonal's file (written with a diagonal estimate only); removed with the others when a run of other inputs starts.</summary>
    public const string DiagonalFile = "diagonal.csv";

    /// <summary>An unfinished diagonal estimate's state (binary; removed once the diagonal is finished, or when a run of other inputs starts).</summary>
    public const string DiagonalProgressFile = "diagonal-progress.bin";

    /// <summary>
    /// The version of what a run writes, recorded among its inputs (<see cref="Open"/> adds it), so that a folder written by
    /// a version whose results differ is started afresh rather than resumed: 2 drew the Monte-Carlo Fisher's and K-FAC's
    /// labels from a SplitMix64 hash of (seed, rank, batch) instead of a linear formula; 3 keys them by (seed, example,
    /// sample), and K-FAC samples them by default.
    /// </summary>
    public const string ResultsFormat = "3: MC labels keyed by (seed, example, sample); K-FAC samples labels by default; resumable diagonal and Frobenius norm";

    readonly IProcessGroup _group;
    HessianOutput _results; // the finished (and unfinished) estimates every write carries

    HessianRun(string folder, HessianOutput description, HessianOutput? earlier, string? replaced, IProcessGroup group)
    {
        Folder = folder;
        Description = description with { Report = null, Diagonal = null, DiagonalOptions = null, Frobenius = null, FrobeniusOptions = null, FrobeniusProgress = null };
        Earlier = earlier?.Report;
        Replaced = replaced;
        _group = group;
        _results = earlier is null ? Description : Description with
        {
            Diagonal = earlier.Diagonal, DiagonalOptions = earlier.DiagonalOptions,
            Frobenius = earlier.Frobenius, FrobeniusOptions = earlier.FrobeniusOptions, FrobeniusProgress = earlier.FrobeniusProgress,
        };
    }

    /// <summary>The output folder.</summary>
    public string Folder { get; }

    /// <summary>The run's description and inputs (without results).</summary>
    public HessianOutput Description { get; }

    /// <summary>The report of an earlier run of the same inputs the run resumes from; null when it starts afresh.</summary>
    public SpectrumReport? Earlier { get; }

    /// <summary>On rank 0, when the folder held results of other inputs (now removed): what differed. Else null.</summary>
    public string? Replaced { get; }

    /// <summary>Path of hessian.json.</summary>
    public string JsonPath => Path.Combine(Folder, JsonFile);

    /// <summary>
    /// Decides whether to resume: rank 0 reads hessian.json and broadcasts the output of identical inputs, if any. When
    /// there is none, rank 0 removes hessian.json, the density and diagonal files of an earlier run. The inputs are the
    /// description's with <see cref="ResultsFormat"/> added.
    /// </summary>
    /// <param name="folder">The output folder.</param>
    /// <param name="description">The run's description and inputs (its results are ignored).</param>
    /// <param name="group">The ranks of a data-parallel run; null: this process alone.</param>
    public static HessianRun Open(string folder, HessianOutput description, IProcessGroup? group = null)
    {
        group ??= SingleProcess.Instance;
        description = description with { Inputs = description.Inputs.With("hessian results", ResultsFormat) };
        var path = Path.Combine(folder, JsonFile);
        string? replaced = null;
        var accepted = group.Broadcast(group.IsRoot() ? description.Inputs.ReadEarlier<HessianOutput>(path, h => h.Inputs, h => h.Report is not null, out replaced) : []);
        var earlier = accepted.Length > 0 ? JsonSerializer.Deserialize<HessianOutput>(accepted, AtomicFile.Json) : null;
        if (group.IsRoot() && earlier is null && Directory.Exists(folder))
            foreach (var f in DensityFiles.Append(DiagonalFile).Append(DiagonalProgressFile).Append(JsonFile)) File.Delete(Path.Combine(folder, f));
        return new HessianRun(folder, description, earlier, earlier is null ? replaced : null, group);
    }

    /// <summary>
    /// Runs the estimators the options ask for (those the earlier run did not finish), writing hessian.json after each and
    /// the density files at the end (rank 0).
    /// </summary>
    /// <param name="op">The Hessian (or any operator the description describes).</param>
    /// <param name="options">What to compute.</param>
    /// <param name="progress">Progress of each estimator.</param>
    /// <param name="ct">Checked by every estimator.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its range (named as in <see cref="SpectrumAnalysisOptions"/>).</exception>
    public SpectrumReport Run(ICurvatureOperator op, SpectrumAnalysisOptions options, IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        // K-FAC's eigenvalues and trace come exactly from its Kronecker factors: given to the analysis as finished stages.
        var earlier = op is KfacOperator kfac ? FromFactors(kfac, options, Earlier) : Earlier;
        var report = SpectrumAnalysis.Run(op, options, progress, partial: r => { if (_group.IsRoot()) AtomicFile.WriteJson(JsonPath, Output(r)); },
            ct: ct, resumeFrom: earlier);
        if (_group.IsRoot()) WriteDensity(report);
        return report;
    }

    static SpectrumReport FromFactors(KfacOperator kfac, SpectrumAnalysisOptions o, SpectrumReport? earlier) =>
        (earlier ?? new SpectrumReport { Size = kfac.Size, Options = o }) with
        {
            Top = o.Top > 0 ? kfac.TopEigenvalues(o.Top) : null,
            Bottom = o.Bottom > 0 ? kfac.TopEigenvalues(o.Bottom, EigenTarget.Smallest) : null,
            Trace = o.Trace ? kfac.TraceEstimate() : null,
        };

    /// <summary>
    /// After <see cref="Run"/>: the diagonal (written to diagonal.csv by parameter name, entry and standard error, and
    /// summarized by parameter tensor) and the Frobenius norm, when asked for; K-FAC's exactly from its factors. Either is
    /// kept from an earlier run of the same inputs and options when it finished there, and continued from its saved probes
    /// when it did not (both save their state after every block of products). Rewrites hessian.json with them (rank 0)
    /// and returns what it holds.
    /// </summary>
    /// <param name="op">The operator <see cref="Run"/> analysed.</param>
    /// <param name="parameters">Its parameters, which name the diagonal's entries.</param>
    /// <param name="report">What <see cref="Run"/> returned.</param>
    /// <param name="diagonal">The diagonal estimator's options; null: no diagonal.</param>
    /// <param name="frobenius">The Frobenius estimator's options; null: no Frobenius norm.</param>
    /// <param name="progress">Progress of each estimator.</param>
    /// <param name="ct">Checked by every estimator.</param>
    public HessianOutput Finish(ICurvatureOperator op, ParameterSet parameters, SpectrumReport report, DiagonalOptions? diagonal, FrobeniusOptions? frobenius,
        IProgress<EstimatorProgress>? progress = null, CancellationToken ct = default)
    {
        string diagonalCsv = Path.Combine(Folder, DiagonalFile), diagonalProgress = Path.Combine(Folder, DiagonalProgressFile);
        if (diagonal is null)
        {
            _results = _results with { Diagonal = null, DiagonalOptions = null };
            if (_group.IsRoot()) { File.Delete(diagonalCsv); File.Delete(diagonalProgress); }
        }
        else if (op is KfacOperator kfac) FinishDiagonal(CurvatureMatrix.ExactDiagonal(kfac), diagonal, parameters, report);
        // Kept when it finished with these options (rank 0 knows whether its entries are still there, and tells the others).
        else if (!Agreed(_results.Diagonal is not null && _results.DiagonalOptions == diagonal && File.Exists(diagonalCsv)))
        {
            var saved = _group.Broadcast(_group.IsRoot() && File.Exists(diagonalProgress) ? File.ReadAllBytes(diagonalProgress) : []);
            // Only rank 0 writes, so only rank 0 pays for copying the state out after every block.
            Action<DiagonalCheckpoint>? save = _group.IsRoot() ? c => { if (WriteDiagonalCheckpoint(c) is { } bytes) AtomicFile.WriteAllBytes(diagonalProgress, bytes); } : null;
            var d = DiagonalEstimator.Estimate(op, diagonal, progress, ct, ReadDiagonalCheckpoint(saved), save);
            FinishDiagonal(d, diagonal, parameters, report);
        }
        if (_group.IsRoot()) File.Delete(diagonalProgress);

        if (frobenius is null) _results = _results with { Frobenius = null, FrobeniusOptions = null, FrobeniusProgress = null };
        else if (op is KfacOperator kfac) _results = _results with { Frobenius = CurvatureMatrix.ExactFrobenius(kfac), FrobeniusOptions = frobenius, FrobeniusProgress = null };
        else if (_results.Frobenius is null || _results.FrobeniusOptions != frobenius)
        {
            var from = _results.FrobeniusOptions == frobenius ? _results.FrobeniusProgress : null;
            _results = _results with { Frobenius = null, FrobeniusOptions = frobenius, FrobeniusProgress = null };
            var f = FrobeniusNorm.Estimate(op, frobenius, progress, ct, from, c =>
            {
                _results = _results with { FrobeniusProgress = c };
                if (_group.IsRoot()) AtomicFile.WriteJson(JsonPath, Output(report));
            });
            _results = _results with { Frobenius = f, FrobeniusProgress = null };
        }
        var output = Output(report);
        if (_group.IsRoot()) AtomicFile.WriteJson(JsonPath, output);
        return output;
    }

    /// <summary>Writes a finished diagonal's entries (diagonal.csv), then hessian.json with its summary: the commit point.</summary>
    void FinishDiagonal(DiagonalEstimate d, DiagonalOptions options, ParameterSet parameters, SpectrumReport report)
    {
        _results = _results with { Diagonal = DiagonalSummary.Of(d, parameters), DiagonalOptions = options };
        if (!_group.IsRoot()) return;
        Csv.Write(Path.Combine(Folder, DiagonalFile), ["parameter", "index", "entry", "standard_error"], DiagonalRows(parameters, d));
        AtomicFile.WriteJson(JsonPath, Output(report));
    }

    /// <summary>Rank 0's answer, on every rank.</summary>
    bool Agreed(bool rootAnswer) => _group.Broadcast(_group.IsRoot() ? [rootAnswer ? (byte)1 : (byte)0] : [0])[0] == 1;

    /// <summary>What a diagonal checkpoint file holds: the run's fingerprint, the checkpoint without its arrays, and their lengths.</summary>
    sealed record DiagonalProgressHeader(string Fingerprint, DiagonalOptions Options, long Size, long Products, int Probes, double Seconds, long Sums, long SquaredSums);

    /// <summary>
    /// A checkpoint as bytes: a length-prefixed JSON header, then the arrays as little-endian float64. Null when the arrays
    /// are too large for one file of this kind (above 1 GiB; the estimate then runs without resuming).
    /// </summary>
    byte[]? WriteDiagonalCheckpoint(DiagonalCheckpoint c)
    {
        long arrays = (c.Sums.LongLength + c.SquaredSums.LongLength) * sizeof(double);
        if (arrays > 1L << 30) return null;
        var header = JsonSerializer.SerializeToUtf8Bytes(new DiagonalProgressHeader(Description.Inputs.Fingerprint, c.Options, c.Size, c.Products, c.Probes, c.Seconds,
            c.Sums.LongLength, c.SquaredSums.LongLength), AtomicFile.Json);
        var bytes = new byte[sizeof(int) + header.Length + arrays];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, sizeof(int)), header.Length);
        header.CopyTo(bytes, sizeof(int));
        var rest = bytes.AsSpan(sizeof(int) + header.Length);
        MemoryMarshal.AsBytes(c.Sums.AsSpan()).CopyTo(rest);
        MemoryMarshal.AsBytes(c.SquaredSums.AsSpan()).CopyTo(rest[(c.Sums.Length * sizeof(double))..]);
        return bytes;
    }

    /// <summary>The checkpoint in <paramref name="bytes"/> when it is one of this run's inputs; null otherwise (the estimate starts afresh).</summary>
    DiagonalCheckpoint? ReadDiagonalCheckpoint(byte[] bytes)
    {
        if (bytes.Length < sizeof(int)) return null;
        try
        {
            int n = BitConverter.ToInt32(bytes, 0);
            if (n <= 0 || n > bytes.Length - sizeof(int)) return null;
            var h = JsonSerializer.Deserialize<DiagonalProgressHeader>(bytes.AsSpan(sizeof(int), n), AtomicFile.Json);
            if (h is null || h.Fingerprint != Description.Inputs.Fingerprint || h.Sums < 0 || h.SquaredSums < 0
                || (h.Sums + h.SquaredSums) * sizeof(double) != bytes.Length - sizeof(int) - n) return null;
            var values = MemoryMarshal.Cast<byte, double>(bytes.AsSpan(sizeof(int) + n));
            return new DiagonalCheckpoint
            {
                Options = h.Options, Size = h.Size, Products = h.Products, Probes = h.Probes, Seconds = h.Seconds,
                Sums = values[..(int)h.Sums].ToArray(), SquaredSums = values[(int)h.Sums..].ToArray(),
            };
        }
        catch (JsonException) { return null; }
    }

    /// <summary>What hessian.json holds for <paramref name="report"/>, with the diagonal and Frobenius norm so far.</summary>
    public HessianOutput Output(SpectrumReport report) => _results with { Report = report };

    /// <summary>An operator's name in words: "GGN".</summary>
    /// <param name="name">Its short name (<see cref="CurvatureOperators.Names"/>).</param>
    public static string Title(string name) => name switch
    {
        "ggn" => "GGN", "ef" => "Empirical Fisher", "mc-fisher" => "Monte-Carlo Fisher", "kfac" => "K-FAC", _ => "Hessian",
    };

    void WriteDensity(SpectrumReport r)
    {
        if (r.Density is not { } d) return;
        Csv.Write(Path.Combine(Folder, "density.csv"), ["eigenvalue", "density"], d.Grid.Select((g, i) => new object[] { g, d.Density[i] }));
        Csv.Write(Path.Combine(Folder, "density-nodes.csv"), ["run", "node", "weight"],
            d.Nodes.SelectMany((nodes, run) => nodes.Select((t, i) => new object[] { run, t, d.Weights[run][i] })));
        Plots.SpectralDensity(d, Path.Combine(Folder, "density.png"), $"{Title(Description.Operator)} spectral density: {Description.Model}", r.LambdaMax, r.LambdaMin);
    }

    static IEnumerable<object[]> DiagonalRows(ParameterSet parameters, DiagonalEstimate d)
    {
        for (int p = 0; p < parameters.Names.Count; p++)
        {
            long n = parameters.Tensors[p].numel();
            for (long i = 0; i < n; i++)
            {
                long j = parameters.Offsets[p] + i;
                yield return [parameters.Names[p], i, d.Diagonal[j], d.StandardErrors[j]];
            }
        }
    }
}
