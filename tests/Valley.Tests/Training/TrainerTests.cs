using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Valley.Training;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Training;

public class TrainerTests
{
    public TrainerTests() => TestUtil.Init();

    static byte[] Bytes(nn.Module m) => m.parameters().SelectMany(p => p.detach().contiguous().bytes.ToArray()).ToArray();

    static TrainOptions Opts(Optimizer optimizer = Optimizer.Sam) => new()
    {
        Optimizer = optimizer, LearningRate = 0.05, BatchSize = 32, Epochs = 4, Seed = 7, Schedule = Schedule.Cosine, SwaStart = 3, MonitorEvery = 5, MonitorExamples = 64,
    };

    static (nn.Module<Tensor, Tensor>, TrainingLog) Train(string? dir, TrainOptions o, Dataset train, Dataset test, bool resume = false, int cancelAtStep = 0,
        LossFunction? loss = null)
    {
        var model = ModelSpec.Parse("mlp:8-16-3").Build(train, seed: 1);
        var t = new Trainer(model, train, o, loss)
        {
            Test = test, OutputFolder = dir, ModelName = "mlp:8-16-3",
            Stopped = log => { if (dir is not null) Valley.Reporting.Plots.Training(log, Path.Combine(dir, "training.png")); },
        };
        using var cts = new CancellationTokenSource();
        var progress = new Valley.Curvature.Spectrum.SyncProgress<TrainProgress>(p => { if (cancelAtStep > 0 && p.Step >= cancelAtStep) cts.Cancel(); });
        return (model, t.Run(resume, progress, cts.Token));
    }

    [Fact]
    public void ResumedRunEndsBitIdenticalToAnUninterruptedOne()
    {
        using var train = Synthetic.GaussianMixture(200, 8, 3, seed: 1);
        using var test = Synthetic.GaussianMixture(100, 8, 3, seed: 2);
        var (full, logFull) = Train(TestUtil.TempDir("full"), Opts(), train, test);
        var dir = TestUtil.TempDir("interrupted");
        // Interrupt in the middle of epoch 3 (7 steps per epoch), then resume.
        Assert.ThrowsAny<OperationCanceledException>(() => Train(dir, Opts(), train, test, cancelAtStep: 17));
        Assert.True(File.Exists(Path.Combine(dir, Trainer.LastWeights)));
        var (resumed, logResumed) = Train(dir, Opts(), train, test, resume: true);
        Assert.Equal(Bytes(full), Bytes(resumed));
        Assert.Equal(logFull.Epochs.Select(e => e.TrainLoss), logResumed.Epochs.Select(e => e.TrainLoss));
        Assert.Equal(logFull.Monitor.Select(m => m.LambdaMax), logResumed.Monitor.Select(m => m.LambdaMax));
        Assert.True(File.Exists(Path.Combine(dir, "checkpoints", "epoch-0004.dat")));
        Assert.True(File.Exists(Path.Combine(dir, "training.png")));
    }

    [Fact]
    public void SameSeedSameResultAndADifferentSeedDiffers()
    {
        using var train = Synthetic.GaussianMixture(120, 8, 3, seed: 1);
        using var test = Synthetic.GaussianMixture(60, 8, 3, seed: 2);
        var o = Opts(Optimizer.Sgd) with { SwaStart = null, MonitorEvery = 0, Epochs = 2 };
        var (a, _) = Train(TestUtil.TempDir("a"), o, train, test);
        var (b, _) = Train(TestUtil.TempDir("b"), o, train, test);
        var (c, _) = Train(TestUtil.TempDir("c"), o with { Seed = 8 }, train, test);
        Assert.Equal(Bytes(a), Bytes(b));
        Assert.NotEqual(Bytes(a), Bytes(c));
    }

    [Fact]
    public void DivergenceStopsWithAClearErrorAndKeepsTheLastGoodCheckpoint()
    {
        using var train = Synthetic.GaussianMixture(120, 8, 3, seed: 1, separation: 50);
        var dir = TestUtil.TempDir("diverge");
        var o = new TrainOptions { Optimizer = Optimizer.Sgd, LearningRate = 1e6, Momentum = 0.9, BatchSize = 16, Epochs = 20 };
        var e = Assert.Throws<DivergenceException>(() => Train(dir, o, train, train));
        Assert.Contains("diverged", e.Message);
        Assert.Contains("lower the learning rate", e.Message);
        Assert.Contains("diverged", File.ReadAllText(Path.Combine(dir, Trainer.StateFile)));
    }

    [Fact]
    public void StopAtLossStopsEarlyAndFullBatchHasTheStabilityThreshold()
    {
        using var train = Synthetic.GaussianMixture(90, 8, 3, seed: 1, separation: 4);
        var o = new TrainOptions { Optimizer = Optimizer.Sgd, Momentum = 0, LearningRate = 0.5, BatchSize = 0, Epochs = 200, StopAtLoss = 0.05, MonitorEvery = 10, MonitorExamples = 90 };
        var (_, log) = Train(TestUtil.TempDir("stop"), o, train, train);
        Assert.True(log.Epochs[^1].TrainLoss < 0.05);
        Assert.True(log.CompletedEpochs < 200);
        Assert.Equal(log.CompletedEpochs, log.CompletedSteps); // full batch: one step per epoch
        Assert.Equal(4.0, log.StabilityThreshold);
    }

    [Fact]
    public void AFinishedRunIsNotOverwrittenWithoutResume()
    {
        using var train = Synthetic.GaussianMixture(60, 8, 3, seed: 1);
        var dir = TestUtil.TempDir("twice");
        var o = new TrainOptions { Epochs = 1, BatchSize = 30 };
        Train(dir, o, train, train);
        var e = Assert.Throws<ArgumentException>(() => Train(dir, o, train, train));
        Assert.Equal("resume", e.ParamName);
        Assert.Contains("holds a training run already", e.Message);
        // Resuming with another learning rate names the option at fault.
        var other = Assert.Throws<ArgumentException>(() => Train(dir, o with { LearningRate = 0.02 }, train, train, resume: true));
        Assert.Equal("LearningRate", other.ParamName);
        Assert.Contains("was started with 0.01", other.Message);
        Assert.Equal(2, Train(dir, o with { Epochs = 2 }, train, train, resume: true).Item2.CompletedEpochs);
    }

    [Fact]
    public void WithoutAnOutputFolderNothingIsWrittenAndTheWeightsAreThoseOfARunWithOne()
    {
        using var train = Synthetic.GaussianMixture(120, 8, 3, seed: 1);
        using var test = Synthetic.GaussianMixture(60, 8, 3, seed: 2);
        var o = Opts() with { Epochs = 2, MonitorEvery = 3, SwaStart = 2 };
        var (withFolder, logA) = Train(TestUtil.TempDir("with-folder"), o, train, test);
        var cwd = Directory.GetFiles(Directory.GetCurrentDirectory(), "*", SearchOption.AllDirectories).Length;
        TrainingLog? stopped = null;
        var model = ModelSpec.Parse("mlp:8-16-3").Build(train, seed: 1);
        var log = new Trainer(model, train, o) { Test = test, Stopped = l => stopped = l }.Run();
        Assert.Equal(Bytes(withFolder), Bytes(model));
        Assert.Same(log, stopped);
        Assert.True(log.Finished);
        Assert.Equal(logA.Epochs.Select(e => e.TestLoss), log.Epochs.Select(e => e.TestLoss));
        Assert.Equal(cwd, Directory.GetFiles(Directory.GetCurrentDirectory(), "*", SearchOption.AllDirectories).Length);
        Assert.Equal("resume", Assert.Throws<ArgumentException>(() => new Trainer(model, train, o).Run(resume: true)).ParamName);
    }

    [Fact]
    public void TheGivenLossIsTrainedAndReported()
    {
        // Half the cross-entropy at twice the learning rate takes the same steps (scaling by powers of two is exact in
        // floating point) and reports half the loss; the default loss of a classification task is the cross-entropy.
        using var train = Synthetic.GaussianMixture(120, 8, 3, seed: 1);
        var o = Opts(Optimizer.Sgd) with { Epochs = 2, SwaStart = null, MonitorEvery = 0 };
        LossFunction half = (output, target) => Losses.CrossEntropy(output, target) * 0.5;
        var (a, logA) = Train(null, o, train, train);
        var (b, logB) = Train(null, o with { LearningRate = 2 * o.LearningRate }, train, train, loss: half);
        Assert.Equal(Bytes(a), Bytes(b));
        Assert.Equal(logA.Epochs.Select(e => e.TrainLoss / 2), logB.Epochs.Select(e => e.TrainLoss));
    }

    [Fact]
    public void BadOptionsNameTheirProperty()
    {
        using var train = Synthetic.GaussianMixture(30, 8, 3, seed: 1);
        var model = ModelSpec.Parse("mlp:8-16-3").Build(train, seed: 1);
        foreach (var (o, name) in new (TrainOptions, string)[]
        {
            (new() { LearningRate = -1 }, "LearningRate"), (new() { Momentum = 1 }, "Momentum"), (new() { MicroBatch = -1 }, "MicroBatch"),
            (new() { Optimizer = Optimizer.Sam, Rho = double.NaN }, "Rho"), (new() { SwaStart = 0 }, "SwaStart"), (new() { Steps = long.MaxValue }, "Steps"),
            (new() { MonitorEvery = 1, MonitorExamples = 0 }, "MonitorExamples"), (new() { Optimizer = (Optimizer)7 }, "Optimizer"),
        })
            Assert.Equal(name, Assert.Throws<ArgumentOutOfRangeException>(() => new Trainer(model, train, o)).ParamName);
    }

    [Fact]
    public void TheLogSaysTheOptimizerInSnakeCase()
    {
        var json = Valley.IO.AtomicFile.ToJson(new TrainingLog { Model = "m", Options = new TrainOptions { Optimizer = Optimizer.Asam, BaseOptimizer = BaseOptimizer.Adam } });
        Assert.Contains("\"optimizer\":\"asam\"", json.Replace(" ", ""));
        Assert.Contains("\"base_optimizer\":\"adam\"", json.Replace(" ", ""));
        var back = System.Text.Json.JsonSerializer.Deserialize<TrainingLog>(json, Valley.IO.AtomicFile.Json)!;
        Assert.Equal(Optimizer.Asam, back.Options.Optimizer);
    }
}
