using Valley.IO;
using System.CommandLine;
using TorchSharp;
using Spectre.Console;
using Valley.Curvature;
using Valley.Data;
using Valley.Distributed;
using Valley.Models;
using Valley.Reporting;
using Valley.Runs;
using static TorchSharp.torch;

namespace Valley.Cli.Commands;

/// <summary>Options most commands share (model, weights, data, subset, batching, seed, dtype, threads, output), and turning them into library objects.</summary>
public sealed class CommonOptions
{
    public readonly Option<string> Model = new("--model", "-m") { Description = "Architecture spec: mlp:784-128-64-10[:tanh], lenet, resnet[:WIDTH[:BLOCKS]]", DefaultValueFactory = _ => "mlp:784-128-64-10" };
    public readonly Option<string?> Weights = new("--weights", "-w") { Description = "Weights file: TorchSharp .dat, PyTorch state_dict .pt/.pth/.bin, or .safetensors (default: freshly initialized with --seed)" };
    public readonly Option<string?> Data = new("--data", "-d") { Description = "Data: an MNIST-format IDX folder, a CSV file, or a folder with train.csv/test.csv (default: Fashion-MNIST from /usr/share/datasets/fashion-mnist). " +
                                                                              "Under mpiexec, a path with {rank} gives each rank its own shard" };
    public readonly Option<int> Classes = new("--classes")
    {
        Description = "Number of classes (default or 0: 10 for IDX data, inferred from CSV labels)",
        Validators = { r => { if (DataSources.ClassCountProblem(r.GetValueOrDefault<int>()) is { } problem) r.AddError(problem); } },
    };
    public readonly Option<long> Subset;
    public readonly Option<long> BatchSize;
    public readonly Option<long> Seed = new("--seed") { Description = "Seed for subsets, initialization and random probes", DefaultValueFactory = _ => 0 };
    public readonly Option<string> DType = new Option<string>("--dtype") { Description = "Compute precision", DefaultValueFactory = _ => "float32" }.AcceptOnlyFromAmong("float32", "float64");
    public readonly Option<int> Threads = new("--threads") { Description = "CPU threads for LibTorch (0 = LibTorch's default)", DefaultValueFactory = _ => 0 };
    public readonly Option<string> Device = new("--device") { Description = "cpu or cuda[:N] (CUDA needs the TorchSharp-cuda packages); under mpiexec, cuda:{rank} gives each rank its own GPU", DefaultValueFactory = _ => "cpu" };
    public readonly Option<bool> TrainMode = new("--train-mode") { Description = "Evaluate in training mode (BatchNorm batch statistics); default is eval mode" };
    public readonly Option<string?> Layer = new("--layer") { Description = "Restrict to parameters whose names start with these comma-separated prefixes, e.g. '4' or '4.weight'" };
    public readonly Option<string> Format = new Option<string>("--format") { Description = "Terminal output", DefaultValueFactory = _ => "table" }.AcceptOnlyFromAmong("table", "json");
    public readonly Option<string> Normalize = new Option<string>("--normalize") { Description = "Input normalization: none (pixels in [0,1]) or standardize (training mean and std)", DefaultValueFactory = _ => "none" }.AcceptOnlyFromAmong("none", "standardize");
    public readonly Option<bool> Verbose = new("--verbose") { Description = "Show stack traces on errors" };

    public CommonOptions(long subsetDefault = 2048, long batchDefault = 1024)
    {
        Subset = new("--subset") { Description = "Use a fixed, seeded subset of N training examples (0 = all)", DefaultValueFactory = _ => subsetDefault };
        BatchSize = new("--batch-size", "-b") { Description = "Examples per batch (results do not depend on it; memory does)", DefaultValueFactory = _ => batchDefault };
    }

    public void AddTo(Command cmd, bool layer = true)
    {
        foreach (var o in new Option[] { Model, Weights, Data, Classes, Subset, BatchSize, Seed, DType, Threads, Device, TrainMode, Format, Normalize, Verbose }) cmd.Options.Add(o);
        if (layer) cmd.Options.Add(Layer);
    }

    /// <summary>
    /// The processes of this run: the single process, or the MPI ranks when started by mpiexec (set by <see cref="ValleyCli"/>).
    /// Rank 0 prints and writes files; the other ranks compute quietly.
    /// </summary>
    public static IProcessGroup Group { get; set; } = SingleProcess.Instance;

    /// <summary>Everything a curvature command needs, built from the options.</summary>
    public sealed class Context : IDisposable
    {
        public required DataSplit Split { get; init; }
        /// <summary>The training examples this process holds: the subset, or this rank's shard of it.</summary>
        public required Dataset Train { get; init; }
        /// <summary>The test examples this process holds (this rank's shard under data parallelism).</summary>
        public required Dataset? Test { get; init; }
        public required nn.Module<Tensor, Tensor> Model { get; init; }
        public required Objective Objective { get; init; }
        /// <summary>The training examples' name before they were shared out between ranks (rank 0's shard file with {rank}).</summary>
        public required string TrainName { get; init; }
        /// <summary>Total training examples over all ranks.</summary>
        public long TrainExamples => Objective.Examples;
        public void Dispose()
        {
            Objective.Dispose();
            if (!ReferenceEquals(Train, Split.Train)) Train.Dispose();
            if (Test is not null && !ReferenceEquals(Test, Split.Test)) Test.Dispose();
            Split.Dispose();
        }
    }

    /// <summary>
    /// The setup of a command that writes into <paramref name="outDir"/>: the folder checked and locked (rank 0), data and model
    /// loaded (every rank). Under MPI the ranks agree on the outcome, so a rank that fails (a missing shard, a locked folder)
    /// makes every rank stop with the same one-line error instead of the others waiting for it forever.
    /// </summary>
    public (OutputLock? Lock, Context Context) Prepare(ParseResult p, string? outDir, bool shard = true)
    {
        var (lockFile, local) = Group.Agree<(OutputLock? Lock, LocalData Local)>(() =>
        {
            OutputLock? lk = null;
            if (outDir is not null && Group.IsRoot())
            {
                AtomicFile.EnsureWritableFolder(outDir);
                lk = OutputLock.Acquire(outDir);
            }
            try { return (lk, LoadLocal(p, shard)); }
            catch { lk?.Dispose(); throw; }
        }, r => { r.Local.Dispose(); r.Lock?.Dispose(); });
        return (lockFile, Connect(p, local, shard));
    }

    /// <summary>The data split with the training subset applied (train may be the split's own training set).</summary>
    public (DataSplit Split, Dataset Train) LoadData(ParseResult p)
    {
        Setup(p);
        var split = DataSources.Open(p.GetValue(Data), p.GetValue(Classes));
        if (p.GetValue(Normalize) == "standardize") split = DataSources.Standardize(split);
        long subset = p.GetValue(Subset);
        if (subset < 0) { split.Dispose(); throw new ValleyException($"--subset: must be 0 (all) or a positive number of examples, got {subset}"); }
        var train = subset > 0 && subset < split.Train.Count ? split.Train.Subset(subset, p.GetValue(Seed)) : split.Train;
        return (split, train);
    }

    /// <summary>What one rank loads on its own: its data (split, training and test examples) and the model.</summary>
    sealed record LocalData(DataSplit Split, Dataset Train, Dataset? Test, nn.Module<Tensor, Tensor> Model, bool PerRank, string TrainName) : IDisposable
    {
        public void Dispose()
        {
            if (!ReferenceEquals(Train, Split.Train)) Train.Dispose();
            if (Test is not null && !ReferenceEquals(Test, Split.Test)) Test.Dispose();
            Split.Dispose();
        }
    }

    /// <summary>
    /// Data and model. With <paramref name="shard"/> and several ranks, each rank keeps its contiguous share of the training
    /// subset and of the test set (the same examples as one process would use, split), or, with {rank} in --data, opens its own
    /// shard and draws its share of --subset from it. Without <paramref name="shard"/> every rank holds all the data.
    /// </summary>
    /// <remarks>This is the local part of loading: no collective operation, so that ranks can agree on its failures.</remarks>
    LocalData LoadLocal(ParseResult p, bool shard)
    {
        Setup(p);
        var path = p.GetValue(Data);
        bool perRank = path?.Contains("{rank}", StringComparison.Ordinal) == true;
        if (perRank && !shard) throw new ValleyException($"--data {path}: {{rank}} shards are for the data-parallel commands (eval, hessian, sharpness); this command needs all the data on every rank");
        if (perRank) path = path!.Replace("{rank}", Group.Rank.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
        var split = DataSources.Open(path, p.GetValue(Classes));
        // One data set: standardized with its own statistics before sharding. Shards: with all shards' statistics, in Connect.
        if (p.GetValue(Normalize) == "standardize" && !perRank) split = DataSources.Standardize(split);
        Dataset? train = null, test = split.Test;
        string? name = null;
        try
        {
            long subset = p.GetValue(Subset);
            if (subset < 0) throw new ValleyException($"--subset: must be 0 (all) or a positive number of examples, got {subset}");
            if (perRank)
            {
                long mine = subset > 0 ? Group.Share(subset).Count : split.Train.Count;
                if (mine == 0) throw new ValleyException($"--subset {subset}: fewer examples than the {Group.Size} ranks");
                train = mine < split.Train.Count ? split.Train.Subset(mine, p.GetValue(Seed) + Group.Rank) : split.Train;
            }
            else
            {
                train = subset > 0 && subset < split.Train.Count ? split.Train.Subset(subset, p.GetValue(Seed)) : split.Train;
                name = train.Name;
                if (shard && Group.Size > 1)
                {
                    var all = train;
                    train = all.Shard(Group);
                    if (!ReferenceEquals(all, split.Train)) all.Dispose();
                    if (test is not null) test = test.Count >= Group.Size ? test.Shard(Group) : null;
                }
            }
            var model = new ModelSource(p.GetValue(Model)!, p.GetValue(Weights), p.GetValue(Seed)).Build(train);
            model.to(ParseDevice(p.GetValue(Device)!));
            return new LocalData(split, train, test, model, perRank, name ?? train.Name);
        }
        catch
        {
            new LocalData(split, train ?? split.Train, test, null!, perRank, "").Dispose();
            throw;
        }
    }

    /// <summary>The collective part of loading: statistics of all shards, and the objective (which counts all ranks' examples).</summary>
    Context Connect(ParseResult p, LocalData local, bool shard)
    {
        var (split, train, test) = (local.Split, local.Train, local.Test);
        if (Group.Size > 1)
        {
            // Every rank must take the same steps: a test set on some shards only would make them call different collectives.
            var withTest = Group.Total(test is null ? 0 : 1)[0];
            if (withTest != 0 && withTest != Group.Size)
            {
                local.Dispose();
                throw new AgreedFailure($"--data {p.GetValue(Data)}: {withTest:0} of {Group.Size} ranks have a test set; give every shard one or none");
            }
        }
        if (p.GetValue(Normalize) == "standardize" && local.PerRank)
        {
            var (mean, std) = DataSources.Statistics(split.Train, Group);
            var normalized = train.Normalize(mean, std);
            var normalizedTest = test?.Normalize(mean, std);
            local.Dispose();
            split = new DataSplit(normalized, normalizedTest);
            (train, test) = (split.Train, split.Test);
        }
        try
        {
            var objective = new Objective(local.Model, Losses.For(train.Task), train, new ObjectiveOptions
            {
                BatchSize = p.GetValue(BatchSize),
                TrainMode = p.GetValue(TrainMode),
                DType = p.GetValue(DType) == "float64" ? ScalarType.Float64 : ScalarType.Float32,
                ParameterFilter = ParameterSet.PrefixFilter(p.GetValue(Layer)),
                Group = shard ? Group : null,
            });
            return new Context { Split = split, Train = train, Test = test, Model = local.Model, Objective = objective, TrainName = local.TrainName };
        }
        catch
        {
            new LocalData(split, train, test, local.Model, local.PerRank, local.TrainName).Dispose();
            throw;
        }
    }

    /// <summary>Options that say where results go or how they are shown, never change a number, and so are no input of a run.</summary>
    static readonly HashSet<string> NotInputs = ["--out", "--format", "--verbose", "--resume"];

    /// <summary>
    /// What a curvature command computes from, by content: every option of the command (file paths replaced by digests of what
    /// they hold: the data as loaded, subset and normalized, on all ranks, and the model's weights and buffers), the number of
    /// ranks, and Valley's version. A rerun into the same --out reuses results only when these are identical.
    /// </summary>
    public static RunInputs Inputs(ParseResult p, Context ctx)
    {
        var inputs = new RunInputs()
            .With("valley", typeof(RunInputs).Assembly.GetName().Version)
            .With("command", string.Join(' ', CommandNames(p)))
            .With("ranks", Group.Size)
            .With("data", RunInputs.AcrossRanks(Group, RunInputs.Digest(ctx.Train)))
            .With("model state", RunInputs.Digest(ctx.Model));
        foreach (var option in p.CommandResult.Command.Options)
        {
            if (NotInputs.Contains(option.Name) || option.Name is "--data" or "--weights") continue;
            inputs = inputs.With(option.Name, p.GetValue<object?>(option.Name));
        }
        return inputs;
    }

    static IEnumerable<string> CommandNames(ParseResult p)
    {
        var names = new List<string>();
        for (var r = p.CommandResult; r.Parent is System.CommandLine.Parsing.CommandResult parent; r = parent) names.Insert(0, r.Command.Name);
        return names;
    }

    /// <summary>Load LibTorch (with a real diagnosis when it cannot load) and set the thread count.</summary>
    public void Setup(ParseResult p) => SetThreads(p.GetValue(Threads));

    /// <summary>
    /// Loads LibTorch and sets its thread count: the given one, else LibTorch's default; under mpiexec the default is the
    /// machine's cores divided by the ranks on it, so that ranks do not oversubscribe the cores.
    /// </summary>
    public static void SetThreads(int threads)
    {
        TorchRuntime.EnsureLoaded();
        if (threads < 0) throw new ValleyException($"--threads: must be 0 (default) or positive, got {threads}");
        if (threads > MachineLimits.MaxThreads)
            throw new ValleyException($"--threads {threads}: this machine has {Environment.ProcessorCount} cores; at most {MachineLimits.MaxThreads} threads (4 per core)");
        if (threads == 0 && Group.Size > 1) threads = Math.Max(1, Environment.ProcessorCount / MpiProcessGroup.LocalRanks);
        if (threads > 0) set_num_threads(threads);
    }

    /// <summary>cpu or cuda[:N]; under mpiexec, cuda:{rank} gives each rank on a machine its own GPU (N = its local rank).</summary>
    public static Device ParseDevice(string text)
    {
        text = text.Replace("{rank}", (int.TryParse(Environment.GetEnvironmentVariable("MPI_LOCALRANKID"), out int local) ? local : 0).ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
        if (text == "cpu") return CPU;
        if (text.StartsWith("cuda", StringComparison.Ordinal))
        {
            if (!cuda.is_available()) throw new ValleyException($"--device {text}: CUDA is not available (this build uses TorchSharp-cpu; install the TorchSharp-cuda packages and a GPU driver)");
            return new Device(text);
        }
        throw new ValleyException($"--device: expected cpu or cuda[:N], got '{text}'");
    }

    public static bool Json(ParseResult p, CommonOptions o) => p.GetValue(o.Format) == "json";

    /// <summary>
    /// Terminal for tables and progress; with --format json, progress goes to stderr so stdout is pure JSON. Ranks other than 0
    /// get a terminal that shows nothing.
    /// </summary>
    public static IAnsiConsole Terminal(bool json) =>
        !Group.IsRoot() ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null), Interactive = InteractionSupport.No, Ansi = AnsiSupport.No })
        : json ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) })
        : AnsiConsole.Console;

    /// <summary>Whether to draw progress bars: on rank 0, when a terminal shows them.</summary>
    public static bool ShowProgress(bool json) => !json && Group.IsRoot() && !(Console.IsErrorRedirected && Console.IsOutputRedirected);
}
