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

    static TrainOptions Opts(string optimizer = "sam") => new()
    {
        Optimizer = optimizer, LearningRate = 0.05, BatchSize = 32, Epochs = 4, Seed = 7, Schedule = Schedule.Cosine, SwaStart = 3, MonitorEvery = 5, MonitorExamples = 64,
    };

    static (nn.Module<Tensor, Tensor>, TrainingLog) Train(string dir, TrainOptions o, Dataset train, Dataset test, bool resume = false, int cancelAtStep = 0)
    {
        var model = ModelSpec.Parse("mlp:8-16-3").Build(train, seed: 1);
        var t = new Trainer(model, "mlp:8-16-3", train, test, o, dir) { Stopped = log => Valley.Reporting.Plots.Training(log, Path.Combine(dir, "training.png")) };
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
        var o = Opts("sgd") with { SwaStart = null, MonitorEvery = 0, Epochs = 2 };
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
        var o = new TrainOptions { Optimizer = "sgd", LearningRate = 1e6, Momentum = 0.9, BatchSize = 16, Epochs = 20 };
        var e = Assert.Throws<DivergenceException>(() => Train(dir, o, train, train));
        Assert.Contains("diverged", e.Message);
        Assert.Contains("lower --lr", e.Message);
    }

    [Fact]
    public void StopAtLossStopsEarlyAndFullBatchHasTheStabilityThreshold()
    {
        using var train = Synthetic.GaussianMixture(90, 8, 3, seed: 1, separation: 4);
        var o = new TrainOptions { Optimizer = "sgd", Momentum = 0, LearningRate = 0.5, BatchSize = 0, Epochs = 200, StopAtLoss = 0.05, MonitorEvery = 10, MonitorExamples = 90 };
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
        Assert.Contains("--resume", Assert.Throws<ValleyException>(() => Train(dir, o, train, train)).Message);
    }
}
