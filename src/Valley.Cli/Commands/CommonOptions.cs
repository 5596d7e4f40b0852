using System.CommandLine;
using TorchSharp;
using Spectre.Console;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using static TorchSharp.torch;

namespace Valley.Cli.Commands;

/// <summary>Options most commands share (model, weights, data, subset, batching, seed, dtype, threads, output), and turning them into library objects.</summary>
public sealed class CommonOptions
{
    public readonly Option<string> Model = new("--model", "-m") { Description = "Architecture spec: mlp:784-128-64-10[:tanh], lenet, resnet[:WIDTH[:BLOCKS]]", DefaultValueFactory = _ => "mlp:784-128-64-10" };
    public readonly Option<string?> Weights = new("--weights", "-w") { Description = "Weights file: TorchSharp .dat, PyTorch state_dict .pt/.pth/.bin, or .safetensors (default: freshly initialized with --seed)" };
    public readonly Option<string?> Data = new("--data", "-d") { Description = "Data: an MNIST-format IDX folder, a CSV file, or a folder with train.csv/test.csv (default: Fashion-MNIST from /usr/share/datasets/fashion-mnist)" };
    public readonly Option<int> Classes = new("--classes") { Description = "Number of classes (default: 10 for IDX data, inferred from CSV labels)" };
    public readonly Option<long> Subset;
    public readonly Option<long> BatchSize;
    public readonly Option<long> Seed = new("--seed") { Description = "Seed for subsets, initialization and random probes", DefaultValueFactory = _ => 0 };
    public readonly Option<string> DType = new Option<string>("--dtype") { Description = "Compute precision", DefaultValueFactory = _ => "float32" }.AcceptOnlyFromAmong("float32", "float64");
    public readonly Option<int> Threads = new("--threads") { Description = "CPU threads for LibTorch (0 = LibTorch's default)", DefaultValueFactory = _ => 0 };
    public readonly Option<string> Device = new("--device") { Description = "cpu or cuda[:N] (CUDA needs the TorchSharp-cuda packages)", DefaultValueFactory = _ => "cpu" };
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

    /// <summary>Everything a curvature command needs, built from the options.</summary>
    public sealed class Context : IDisposable
    {
        public required DataSplit Split { get; init; }
        public required Dataset Train { get; init; }
        public required nn.Module<Tensor, Tensor> Model { get; init; }
        public required Objective Objective { get; init; }
        public void Dispose() { Objective.Dispose(); if (!ReferenceEquals(Train, Split.Train)) Train.Dispose(); Split.Dispose(); }
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

    public Context Load(ParseResult p)
    {
        Setup(p);
        var split = DataSources.Open(p.GetValue(Data), p.GetValue(Classes));
        if (p.GetValue(Normalize) == "standardize") split = DataSources.Standardize(split);
        try
        {
            long subset = p.GetValue(Subset);
            if (subset < 0) throw new ValleyException($"--subset: must be 0 (all) or a positive number of examples, got {subset}");
            var train = subset > 0 && subset < split.Train.Count ? split.Train.Subset(subset, p.GetValue(Seed)) : split.Train;
            var model = new ModelSource(p.GetValue(Model)!, p.GetValue(Weights), p.GetValue(Seed)).Build(train);
            model.to(ParseDevice(p.GetValue(Device)!));
            var objective = new Objective(model, Losses.For(train.Task), train, new ObjectiveOptions
            {
                BatchSize = p.GetValue(BatchSize),
                TrainMode = p.GetValue(TrainMode),
                DType = p.GetValue(DType) == "float64" ? ScalarType.Float64 : ScalarType.Float32,
                ParameterFilter = ParameterSet.PrefixFilter(p.GetValue(Layer)),
            });
            return new Context { Split = split, Train = train, Model = model, Objective = objective };
        }
        catch
        {
            split.Dispose();
            throw;
        }
    }

    /// <summary>Load LibTorch (with a real diagnosis when it cannot load) and set the thread count.</summary>
    public void Setup(ParseResult p)
    {
        TorchRuntime.EnsureLoaded();
        int threads = p.GetValue(Threads);
        if (threads < 0) throw new ValleyException($"--threads: must be 0 (default) or positive, got {threads}");
        if (threads > 0) set_num_threads(threads);
    }

    static Device ParseDevice(string text)
    {
        if (text == "cpu") return CPU;
        if (text.StartsWith("cuda", StringComparison.Ordinal))
        {
            if (!cuda.is_available()) throw new ValleyException($"--device {text}: CUDA is not available (this build uses TorchSharp-cpu; install the TorchSharp-cuda packages and a GPU driver)");
            return new Device(text);
        }
        throw new ValleyException($"--device: expected cpu or cuda[:N], got '{text}'");
    }

    public static bool Json(ParseResult p, CommonOptions o) => p.GetValue(o.Format) == "json";

    /// <summary>Terminal for tables and progress; with --format json, progress goes to stderr so stdout is pure JSON.</summary>
    public static IAnsiConsole Terminal(bool json) => json
        ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) })
        : AnsiConsole.Console;
}
