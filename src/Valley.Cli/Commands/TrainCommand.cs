using Valley.IO;
using System.CommandLine;
using Spectre.Console;
using Valley.Models;
using Valley.Training;

namespace Valley.Cli.Commands;

/// <summary><c>valley train</c>: SGD, Adam, SAM, ASAM (m-sharpness, SWA, schedules) with a sharpness monitor, checkpoints and resume.</summary>
public static class TrainCommand
{
    /// <summary>The <c>train</c> command and its options.</summary>
    public static Command Build()
    {
        var o = new CommonOptions(subsetDefault: 0, batchDefault: 128);
        var optimizer = new Option<string>("--optimizer") { Description = "sgd, adam, sam or asam", DefaultValueFactory = _ => "sgd" }.AcceptOnlyFromAmong("sgd", "adam", "sam", "asam");
        var baseOpt = new Option<string>("--base-optimizer") { Description = "Base optimizer of SAM/ASAM: sgd or adam", DefaultValueFactory = _ => "sgd" }.AcceptOnlyFromAmong("sgd", "adam");
        var lr = new Option<double>("--lr") { Description = "Learning rate", DefaultValueFactory = _ => 0.01 };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.9 };
        var wd = new Option<double>("--weight-decay") { Description = "Weight decay (in the base optimizer)", DefaultValueFactory = _ => 0 };
        var rho = new Option<double?>("--rho") { Description = "SAM/ASAM radius ρ (default 0.05 for SAM, 0.5 for ASAM)" };
        var eta = new Option<double>("--eta") { Description = "ASAM η", DefaultValueFactory = _ => 0.01 };
        var m = new Option<long>("--m") { Description = "m-sharpness: micro-batch size with its own perturbation (0 = whole batch)", DefaultValueFactory = _ => 0 };
        var epochs = new Option<int>("--epochs") { Description = "Epochs", DefaultValueFactory = _ => 10 };
        var steps = new Option<long>("--steps") { Description = "Stop after this many steps (0 = use --epochs)", DefaultValueFactory = _ => 0 };
        var stopAt = new Option<double?>("--stop-at-loss") { Description = "Stop when the full training loss falls below this value (checked after every epoch)" };
        var schedule = new Option<string>("--schedule") { Description = "constant, step (×0.1 at 50% and 75%) or cosine", DefaultValueFactory = _ => "constant" }.AcceptOnlyFromAmong("constant", "step", "cosine");
        var swa = new Option<int?>("--swa-start") { Description = "Average weights from this epoch on (SWA), BatchNorm statistics recomputed at the end" };
        var monitor = new Option<long>("--monitor-every") { Description = "λmax by Lanczos every N steps (0 = off)", DefaultValueFactory = _ => 0 };
        var monitorGgn = new Option<bool>("--monitor-ggn") { Description = "The monitor also computes the GGN's λmax (generalized Gauss-Newton) beside the Hessian's" };
        var monitorN = new Option<long>("--monitor-examples") { Description = "Fixed training examples for the monitor", DefaultValueFactory = _ => 2048 };
        var ckEvery = new Option<int>("--checkpoint-every") { Description = "Keep a weights checkpoint every N epochs (for trajectories)", DefaultValueFactory = _ => 1 };
        var savePt = new Option<bool>("--save-pt") { Description = "Also write PyTorch .pt checkpoints" };
        var outDir = new Option<string>("--out", "-o") { Description = "Output folder", DefaultValueFactory = _ => "out/train" };
        var resume = new Option<bool>("--resume") { Description = "Continue the run in --out from its last checkpoint" };
        // The library's names of options whose option here is not their kebab-case.
        OptionNames.Register("train", new Dictionary<string, string> { ["LearningRate"] = "--lr", ["MicroBatch"] = "--m", ["SavePyTorch"] = "--save-pt" });
        var cmd = new Command("train", "Train a model with SGD, Adam, SAM or ASAM, watching sharpness (λmax) as it trains. Resumable.");
        o.AddTo(cmd, layer: false);
        foreach (var opt in new Option[] { optimizer, baseOpt, lr, momentum, wd, rho, eta, m, epochs, steps, stopAt, schedule, swa, monitor, monitorGgn, monitorN, ckEvery, savePt, outDir, resume })
            cmd.Options.Add(opt);
        cmd.SetAction((p, ct) =>
        {
            var options = new TrainOptions
            {
                Optimizer = Enum.Parse<Optimizer>(p.GetValue(optimizer)!, ignoreCase: true),
                BaseOptimizer = Enum.Parse<BaseOptimizer>(p.GetValue(baseOpt)!, ignoreCase: true), LearningRate = p.GetValue(lr), Momentum = p.GetValue(momentum),
                WeightDecay = p.GetValue(wd), Rho = p.GetValue(rho), Eta = p.GetValue(eta), MicroBatch = p.GetValue(m), BatchSize = p.GetValue(o.BatchSize),
                Epochs = p.GetValue(epochs), Steps = p.GetValue(steps), StopAtLoss = p.GetValue(stopAt),
                Schedule = Enum.Parse<Schedule>(p.GetValue(schedule)!, ignoreCase: true), SwaStart = p.GetValue(swa), MonitorEvery = p.GetValue(monitor), MonitorGgn = p.GetValue(monitorGgn),
                MonitorExamples = p.GetValue(monitorN), CheckpointEvery = p.GetValue(ckEvery), SavePyTorch = p.GetValue(savePt), Seed = p.GetValue(o.Seed),
            };
            var dir = p.GetValue(outDir)!;
            // Identical on every rank, so every rank can stop on its own.
            if (CommonOptions.Group.Size > 1)
                throw new AgreedFailure($"train runs in one process (started here by mpiexec with {CommonOptions.Group.Size} ranks); 'valley study' trains several models in parallel across ranks");
            using var data = o.LoadData(p);
            var (split, train) = (data.Split, data.Train);
            options.Validate(train.Count);
            AtomicFile.EnsureWritableFolder(dir);
            bool f64 = p.GetValue(o.DType) == "float64";
            using var train64 = f64 ? train.To(TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float64) : null;
            using var test64 = f64 ? split.Test?.To(TorchSharp.torch.CPU, TorchSharp.torch.ScalarType.Float64) : null;
            var spec = p.GetValue(o.Model)!;
            var source = new ModelSource(spec, p.GetValue(o.Weights), p.GetValue(o.Seed));
            var model = source.Build(train);
            if (f64) TorchSharp.ModuleExtensionMethods.to(model, TorchSharp.torch.ScalarType.Float64);
            TorchSharp.ModuleExtensionMethods.to(model, CommonOptions.ParseDevice(p.GetValue(o.Device)!));
            using var lockFile = OutputLock.Acquire(dir);
            var trainer = new Trainer(model, train64 ?? train, options, o.LossOf(p, train))
            {
                Test = test64 ?? split.Test, OutputFolder = dir, ModelName = source.Name, Stopped = log => Reporting.Plots.Training(log, Path.Combine(dir, "training.png")),
            };
            bool json = CommonOptions.Json(p, o);
            var term = CommonOptions.Terminal(json);
            if (!json) term.MarkupLine($"[bold]{Markup.Escape(spec)}[/] on {Markup.Escape(train.ToString())}; {options.Optimizer.ToString().ToLowerInvariant()}, lr {options.LearningRate}, batch {(options.BatchSize == 0 ? "full" : options.BatchSize)}");
            TrainingLog log = null!;
            // A bar per epoch: steps within the epoch, the running loss, and at the epoch's end its full-data numbers.
            static Bar View(TrainProgress pr)
            {
                string lambda = pr.LambdaMax is { } l ? $" λmax {l:G4}" : "";
                return pr.EpochEnd is { } e
                    ? new Bar($"epoch {pr.Epoch}", $"epoch {pr.Epoch}/{pr.Epochs} train loss {e.TrainLoss:F4} acc {100 * e.TrainAccuracy:F1}%" +
                        (e.TestAccuracy is { } ta ? $" test acc {100 * ta:F1}%" : "") + lambda, pr.StepsPerEpoch, pr.StepsPerEpoch)
                    : new Bar($"epoch {pr.Epoch}", $"epoch {pr.Epoch}/{pr.Epochs} loss {pr.RunningLoss:F4}" + lambda, (pr.Step - 1) % pr.StepsPerEpoch + 1, pr.StepsPerEpoch);
            }
            ProgressBars.Run(term, !(Console.IsErrorRedirected && Console.IsOutputRedirected), (Func<TrainProgress, Bar>)View,
                progress => log = trainer.Run(p.GetValue(resume), progress, ct));
            if (json) { p.InvocationConfiguration.Output.WriteLine(AtomicFile.ToJson(log)); return Task.FromResult(0); }
            var last = log.Epochs.Last();
            var t = new Table().AddColumns("split", "loss", "accuracy");
            t.AddRow("train", $"{last.TrainLoss:G5}", last.TrainAccuracy is { } a ? $"{100 * a:F2}%" : "-");
            if (last.TestLoss is { } tl) t.AddRow("test", $"{tl:G5}", last.TestAccuracy is { } b ? $"{100 * b:F2}%" : "-");
            term.Write(t);
            if (log.Monitor.Count > 0) term.MarkupLine($"λmax at step {log.Monitor[^1].Step}: {log.Monitor[^1].LambdaMax:G5}" +
                                                      (log.Monitor[^1].GgnLambdaMax is { } gl ? $", GGN λmax {gl:G5}" : "") + (log.StabilityThreshold is { } th ? $" (2/η = {th:G4})" : ""));
            term.MarkupLine($"{Markup.Escape(log.StopReason ?? "")}. Weights: [blue]{Markup.Escape(Path.Combine(dir, "model.dat"))}[/]{(model is TorchScriptModel ? " (and model.pt, model.safetensors with the archive's names, model.torchscript.pt)" : "")}; log.csv, train.json, training.png, checkpoints/ in {Markup.Escape(dir)}");
            return Task.FromResult(0);
        });
        return cmd;
    }
}
