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
    public readonly Option<string> Model = new("--model", "-m") { Description = "Architecture spec: mlp:784-128-64-10[:tanh], lenet, resnet[:WIDTH[:BLOCKS]]; or the path of your PyTorch model as a TorchScript archive (torch.jit.script(model).save(\"model.pt\"))", DefaultValueFactory = _ => "mlp:784-128-64-10" };
    public readonly Option<string?> Weights = new("--weights", "-w") { Description = "Weights file: TorchSharp .dat, PyTorch state_dict .pt/.pth/.bin, .safetensors, or a TorchScript archive (default: the archive's own weights, or a built-in spec freshly initialized with --seed)" };
    public readonly Option<string?> Data = new("--data", "-d") { Description = "Data: an MNIST-format IDX folder, a CSV file, a folder with train.csv/test.csv, a tensor file (.npz, .npy with --labels, a PyTorch file of tensors, .safetensors: " +
                                                                              "arrays x, y or x_train, y_train, x_test, y_test) or a folder with x.npy, y.npy (default: Fashion-MNIST from /usr/share/datasets/fashion-mnist). " +
                                                                              "Under mpiexec, a path with {rank} gives each rank its own shard" };
    public readonly Option<string?> Labels = new("--labels") { Description = "Labels or targets for a tensor file of inputs given as --data (e.g. --data x.npy --labels y.npy); {rank} as in --data" };
    public readonly Option<string?> Task = new Option<string?>("--task") { Description = "classification or regression (default: told by the data: integer labels are classes, float targets regression)" }.AcceptOnlyFromAmong("classification", "regression");
    public readonly Option<string?> Loss = new Option<string?>("--loss") { Description = "cross-entropy, mse or bce (binary cross-entropy with logits, float targets in [0,1]); default: cross-entropy for classification, mse for regression" }.AcceptOnlyFromAmong(Losses.Names.ToArray());
    public readonly Option<int> Classes = new("--classes")
    {
        Description = "Number of classes (default or 0: 10 for IDX data, inferred from CSV labels and integer label arrays)",
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
    public readonly Option<string?> GraphMemory = new("--graph-memory")
    {
        Description = "Memory for the batches' cached gradient graphs between Hessian-vector products, e.g. 2G, 512M, 0 (off); default: a quarter of the machine's memory, at most half of what is free",
        Validators = { r => { if (r.GetValueOrDefault<string?>() is { } v && ParseBytes(v) is null) r.AddError($"--graph-memory: expected a size such as 2G, 512M or 0, got '{v}'"); } },
    };
    bool _graphMemory;
    public readonly Option<string> HessianProducts = new Option<string>("--hessian-products")
    {
        Description = "How Hessian-vector products are computed: auto (explicit R-passes for stacks of Linear layers and tanh/relu/sigmoid/gelu under cross-entropy, MSE or BCE; double backward otherwise) or double-backward (always autograd); both agree to rounding",
        DefaultValueFactory = _ => "auto",
    }.AcceptOnlyFromAmong("auto", "double-backward");

    public CommonOptions(long subsetDefault = 2048, long batchDefault = 1024)
    {
        Subset = new("--subset") { Description = "Use a fixed, seeded subset of N training examples (0 = all)", DefaultValueFactory = _ => subsetDefault };
        BatchSize = new("--batch-size", "-b") { Description = "Examples per batch (results do not depend on it; memory does)", DefaultValueFactory = _ => batchDefault };
    }

    public void AddTo(Command cmd, bool layer = true)
    {
        foreach (var o in new Option[] { Model, Weights, Data, Labels, Task, Loss, Classes, Subset, BatchSize, Seed, DType, Threads, Device, TrainMode, Format, Normalize, Verbose }) cmd.Options.Add(o);
        if (layer) cmd.Options.Add(Layer);
    }

    /// <summary>Adds --graph-memory and --hessian-products, for the commands that build Hessian operators.</summary>
    public void AddGraphMemory(Command cmd)
    {
        cmd.Options.Add(GraphMemory);
        cmd.Options.Add(HessianProducts);
        _graphMemory = true;
    }

    /// <summary>A size in bytes: a number with an optional K, M, G or T suffix (powers of 1024; a trailing B or iB allowed); null when not one.</summary>
    public static long? ParseBytes(string text)
    {
        var t = text.Trim().ToUpperInvariant();
        if (t.EndsWith("IB", StringComparison.Ordinal)) t = t[..^2];
        else if (t.EndsWith('B')) t = t[..^1];
        double scale = 1;
        if (t.Length > 0 && "KMGT".IndexOf(t[^1]) is var i and >= 0)
        {
            scale = Math.Pow(1024, i + 1);
            t = t[..^1];
        }
        if (!double.TryParse(t, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var v) || !double.IsFinite(v) || v < 0 || v * scale > long.MaxValue) return null;
        return (long)(v * scale);
    }

    /// <summary>
    /// The processes of this run: the single process, or the MPI ranks when started by mpiexec (set by <see cref="ValleyCli"/>).
    /// Rank 0 prints and writes files; the other ranks compute quietly.
    /// </summary>
    public static IProcessGroup Group { get; set; } = SingleProcess.Instance;

    /// <summary>Everything a curvature command needs, built from the options.</summary>
    public sealed class Context : IDisposable
    {
        /// <summary>This rank's data (all of it in one process).</summary>
        public required RankData Data { get; init; }
        public DataSplit Split => Data.Split;
        /// <summary>The training examples this process holds: the subset, or this rank's shard of it.</summary>
        public Dataset Train => Data.Train;
        /// <summary>The test examples this process holds (this rank's shard under data parallelism).</summary>
        public Dataset? Test => Data.Test;
        public required nn.Module<Tensor, Tensor> Model { get; init; }
        public required Objective Objective { get; init; }
        /// <summary>The training examples' name before they were shared out between ranks (rank 0's shard file with {rank}).</summary>
        public string TrainName => Data.TrainName;
        /// <summary>Total training examples over all ranks.</summary>
        public long TrainExamples => Objective.Examples;
        public void Dispose()
        {
            Objective.Dispose();
            Data.Dispose();
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

    /// <summary>All the data in this process (train runs in one process), with the training subset applied.</summary>
    public RankData LoadData(ParseResult p)
    {
        Setup(p);
        return DistributedData.LoadLocal(Request(p, shard: false), SingleProcess.Instance);
    }

    /// <summary>What one rank loads on its own: its data and the model.</summary>
    sealed record LocalData(RankData Data, nn.Module<Tensor, Tensor>? Model) : IDisposable
    {
        public void Dispose() => Data.Dispose();
    }

    DataRequest Request(ParseResult p, bool shard) => new()
    {
        Path = p.GetValue(Data), Labels = p.GetValue(Labels), Task = ParseTask(p.GetValue(Task)), DType = ParseDType(p.GetValue(DType)),
        Classes = p.GetValue(Classes), Standardize = p.GetValue(Normalize) == "standardize",
        Subset = p.GetValue(Subset), Seed = p.GetValue(Seed), Shard = shard,
    };

    /// <summary>The local part of loading (no collective operation, so that ranks can agree on its failures): data and model.</summary>
    LocalData LoadLocal(ParseResult p, bool shard)
    {
        Setup(p);
        var data = DistributedData.LoadLocal(Request(p, shard), Group);
        try
        {
            var model = new ModelSource(p.GetValue(Model)!, p.GetValue(Weights), p.GetValue(Seed)).Build(data.Train);
            model.to(ParseDevice(p.GetValue(Device)!));
            return new LocalData(data, model);
        }
        catch { data.Dispose(); throw; }
    }

    /// <summary>The collective part of loading: test sets and statistics over all shards, and the objective (which counts all ranks' examples).</summary>
    Context Connect(ParseResult p, LocalData local, bool shard)
    {
        var data = DistributedData.Connect(local.Data, Request(p, shard), Group);
        try
        {
            var objective = new Objective(local.Model!, LossOf(p, data.Train), data.Train, new ObjectiveOptions
            {
                BatchSize = p.GetValue(BatchSize),
                TrainMode = p.GetValue(TrainMode),
                DType = p.GetValue(DType) == "float64" ? ScalarType.Float64 : ScalarType.Float32,
                ParameterFilter = ParameterSet.PrefixFilter(p.GetValue(Layer)),
                Group = shard ? Group : null,
                GraphMemoryBytes = _graphMemory && p.GetValue(GraphMemory) is { } gm ? ParseBytes(gm) : null,
                HessianProducts = _graphMemory && p.GetValue(HessianProducts) == "double-backward" ? HessianProductMethod.DoubleBackward : HessianProductMethod.Auto,
            });
            return new Context { Data = data, Model = local.Model!, Objective = objective };
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    /// <summary>--task as the library's task kind (null: told by the data).</summary>
    public static TaskKind? ParseTask(string? task) => task switch
    {
        null => null,
        "classification" => TaskKind.Classification,
        "regression" => TaskKind.Regression,
        _ => throw new ValleyException($"--task: expected classification or regression, got '{task}'"),
    };

    static ScalarType ParseDType(string? dtype) => dtype == "float64" ? ScalarType.Float64 : ScalarType.Float32;

    /// <summary>The loss --loss names, or the data's task's default.</summary>
    public LossFunction LossOf(ParseResult p, Dataset train) => Losses.Named(p.GetValue(Loss), train.Task);

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
            // The thread count LibTorch runs with (--threads 0 means its default, which depends on the machine): it changes rounding.
            .With("threads", get_num_threads())
            .With("data", RunInputs.AcrossRanks(Group, RunInputs.Digest(ctx.Train)))
            .With("model state", RunInputs.Digest(ctx.Model))
            // An archive's code, not only its weights, makes the model.
            .With("model", new ModelSource(p.GetValue<string>("--model")!).Digest);
        foreach (var option in p.CommandResult.Command.Options)
        {
            // Files are inputs by content: the data (with --labels) and the model state are digested above.
            if (NotInputs.Contains(option.Name) || option.Name is "--data" or "--weights" or "--labels") continue;
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
