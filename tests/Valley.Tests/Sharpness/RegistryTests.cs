using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Valley.Sharpness;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Sharpness;

/// <summary>The measures are known by descriptors, not by string matching; options and needs are checked in library terms before anything runs.</summary>
public class RegistryTests
{
    public RegistryTests() => TestUtil.Init();

    [Fact]
    public void TheRegistryKeepsTheNamesThatResultsAndTheStudyUse()
    {
        Assert.Equal(
        [
            "keskar", "keskar-subspace", "sam", "worst-case-l2", "worst-case-l2-adaptive", "worst-case-linf", "worst-case-linf-adaptive",
            "average-case", "average-case-adaptive", "pacbayes", "worst-case-flatness", "relative-flatness", "fisher-trace", "fisher-rao",
        ], SharpnessMeasures.All.Select(m => m.Name));
        Assert.All(SharpnessMeasures.All, m => Assert.False(string.IsNullOrWhiteSpace(m.Description)));
        Assert.Same(SharpnessMeasures.WorstCaseLInfAdaptive, SharpnessMeasures.Get("worst-case-linf-adaptive"));
        Assert.Null(SharpnessMeasures.Resolve(["sam", "all"]));
        Assert.Equal([SharpnessMeasures.Sam, SharpnessMeasures.Keskar], SharpnessMeasures.Resolve(["sam", "keskar", "sam"]));
        var e = Assert.Throws<ArgumentException>(() => SharpnessMeasures.Resolve(["keskar", "sharpest"]));
        Assert.Equal("Measures", e.ParamName);
        Assert.Contains("unknown measure 'sharpest'", e.Message);
    }

    [Fact]
    public void EachMeasureRunsWithTheSuitesOptionsAndGivesItsResultNames()
    {
        using var data = Synthetic.GaussianMixture(48, 4, 3, seed: 2);
        var model = ModelSpec.Parse("mlp:4-5-3").Build(data, seed: 1);
        using var obj = new Objective(model, Losses.CrossEntropy, data);
        var o = new SharpnessSuiteOptions { Epsilons = [1e-3, 2e-3], Rho = 0.02, Steps = 3, Samples = 2, Seed = 5 };
        var keskar = SharpnessMeasures.Keskar.Run(obj, o, default).ToList();
        Assert.Equal([1e-3, 2e-3], keskar.Select(r => r.Parameters["epsilon"]));
        Assert.All(keskar, r => Assert.Equal(3, r.Parameters["steps"]));
        var wc = Assert.Single(SharpnessMeasures.WorstCaseLInf.Run(obj, o, default));
        Assert.Equal(("worst-case-linf", 0.02, 3.0), (wc.Measure, wc.Parameters["rho"], wc.Parameters["steps"]));
        var avg = Assert.Single(SharpnessMeasures.AverageCaseAdaptive.Run(obj, o, default));
        Assert.Equal(("average-case-adaptive", 0.02, 2.0), (avg.Measure, avg.Parameters["rho"], avg.Parameters["samples"]));
        Assert.Equal("sam-one-step", Assert.Single(SharpnessMeasures.Sam.Run(obj, o, default)).Measure);
        // Without the suite's values, the published defaults.
        var defaults = Assert.Single(SharpnessMeasures.WorstCaseL2Adaptive.Run(obj, new SharpnessSuiteOptions(), default));
        Assert.Equal((0.5, 20.0), (defaults.Parameters["rho"], defaults.Parameters["steps"]));
    }

    [Fact]
    public void AllRunsWhatTheObjectiveAllowsAndANamedMeasureThatCannotRunStopsBeforeAnyRuns()
    {
        using var regression = Synthetic.LinearTeacher(40, 4, seed: 3);
        var model = ModelSpec.Parse("mlp:4-6-1").Build(regression, seed: 1);
        using var obj = new Objective(model, Losses.For(regression.Task), regression);
        var chosen = SharpnessSuite.Measures(obj, new SharpnessSuiteOptions()).Select(m => m.Name).ToList();
        Assert.DoesNotContain("pacbayes", chosen);
        Assert.DoesNotContain("worst-case-flatness", chosen);
        Assert.DoesNotContain("fisher-rao", chosen);
        Assert.Contains("relative-flatness", chosen);
        var reports = new List<SharpnessProgress>();
        var e = Assert.Throws<ValleyException>(() => SharpnessSuite.Run(obj, new SharpnessSuiteOptions { Measures = [SharpnessMeasures.Sam, SharpnessMeasures.PacBayes] },
            new SyncProgress<SharpnessProgress>(reports.Add)));
        Assert.Contains("classification", e.Message);
        Assert.Empty(reports);
        // A parameter selection without a weight matrix: an argument error naming the filter.
        using var biases = new Objective(model, Losses.For(regression.Task), regression, new ObjectiveOptions { ParameterFilter = n => n.EndsWith(".bias", StringComparison.Ordinal) });
        Assert.DoesNotContain("relative-flatness", SharpnessSuite.Measures(biases, new SharpnessSuiteOptions()).Select(m => m.Name));
        var a = Assert.Throws<ArgumentException>(() => SharpnessSuite.Run(biases, new SharpnessSuiteOptions { Measures = [SharpnessMeasures.RelativeFlatness] }));
        Assert.Equal(nameof(ObjectiveOptions.ParameterFilter), a.ParamName);
        Assert.Contains("weight matrix", a.Message);
    }

    [Fact]
    public void FisherTraceNeedsIndependentExamplesSoTrainModeWithBatchNormLeavesItOut()
    {
        // Per-example gradients under BatchNorm's batch statistics are no example's own: "all" leaves fisher-trace out in
        // train mode, naming it is an argument error of TrainMode, and eval mode (running statistics) runs it.
        var g = new Generator(4);
        using var data = new Dataset("random-images", rand([8, 1, 28, 28], generator: g), randint(0, 10, [8], generator: g), TaskKind.Classification, 10);
        var model = ModelSpec.Parse("resnet:1").Build(data, seed: 5);
        using var train = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { TrainMode = true, BatchSize = 4 });
        Assert.DoesNotContain("fisher-trace", SharpnessSuite.Measures(train, new SharpnessSuiteOptions()).Select(m => m.Name));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => SharpnessSuite.Run(train, new SharpnessSuiteOptions { Measures = [SharpnessMeasures.FisherTrace] }));
        Assert.Equal(nameof(ObjectiveOptions.TrainMode), e.ParamName);
        Assert.Contains("BatchNorm", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => FisherTrace.Compute(train));
        using var eval = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 4 });
        Assert.Contains("fisher-trace", SharpnessSuite.Measures(eval, new SharpnessSuiteOptions()).Select(m => m.Name));
        Assert.True(FisherTrace.Compute(eval).Value > 0);
    }

    [Theory]
    [InlineData("Rho")]
    [InlineData("Steps")]
    [InlineData("Samples")]
    [InlineData("Epsilons")]
    public void BadSuiteOptionsAreArgumentErrorsInTheOptionsNames(string name)
    {
        var o = name switch
        {
            "Rho" => new SharpnessSuiteOptions { Rho = 0 },
            "Steps" => new SharpnessSuiteOptions { Steps = 0 },
            "Samples" => new SharpnessSuiteOptions { Samples = -1 },
            _ => new SharpnessSuiteOptions { Epsilons = [1e-3, double.PositiveInfinity] },
        };
        Assert.Equal(name, Assert.ThrowsAny<ArgumentException>(o.Validate).ParamName);
    }

    [Fact]
    public void MeasureOptionsAreCheckedInTheirOwnNames()
    {
        using var data = Synthetic.GaussianMixture(16, 3, 2, seed: 2);
        using var obj = new Objective(ModelSpec.Parse("mlp:3-4-2").Build(data, seed: 1), Losses.CrossEntropy, data);
        Assert.Equal("Epsilon", Assert.Throws<ArgumentOutOfRangeException>(() => KeskarSharpness.Compute(obj, new KeskarOptions { Epsilon = -1 })).ParamName);
        Assert.Equal("SubspaceDimension", Assert.Throws<ArgumentOutOfRangeException>(() => KeskarSharpness.Compute(obj, new KeskarOptions { SubspaceDimension = 10_000 })).ParamName);
        Assert.Equal("Rho", Assert.Throws<ArgumentOutOfRangeException>(() => SamSharpness.Compute(obj, new SamSharpnessOptions { Rho = double.NaN })).ParamName);
        Assert.Equal("Steps", Assert.Throws<ArgumentOutOfRangeException>(() => WorstCaseSharpness.Compute(obj, new WorstCaseSharpnessOptions { Steps = 0 })).ParamName);
        Assert.Equal("Samples", Assert.Throws<ArgumentOutOfRangeException>(() => AverageCaseSharpness.Compute(obj, new AverageCaseSharpnessOptions { Samples = 0 })).ParamName);
        Assert.Equal("TargetDrop", Assert.Throws<ArgumentOutOfRangeException>(() => PacBayesFlatness.Compute(obj, null, new PacBayesFlatnessOptions { TargetDrop = 1 })).ParamName);
        Assert.Equal("AscentSteps", Assert.Throws<ArgumentOutOfRangeException>(() => WorstCaseFlatness.Compute(obj, new WorstCaseFlatnessOptions { AscentSteps = 0 })).ParamName);
        Assert.Equal("Layer", Assert.Throws<ArgumentOutOfRangeException>(() => RelativeFlatness.Compute(obj, new RelativeFlatnessOptions { Layer = "0.bias" })).ParamName);
    }

    [Fact]
    public void PacBayesInitBoundsUseTheInitializationsWeightsOfTheSelectedParameters()
    {
        using var data = Synthetic.GaussianMixture(60, 5, 3, seed: 8);
        var model = ModelSpec.Parse("mlp:5-6-3").Build(data, seed: 2);
        model.to(ScalarType.Float64);
        var init = ModelSpec.Parse("mlp:5-6-3").Build(data, seed: 9);
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { ParameterFilter = n => n.StartsWith("2.", StringComparison.Ordinal) });
        var r = PacBayesFlatness.Compute(obj, init, new PacBayesFlatnessOptions { Samples = 2, Depth = 3 });
        var flat = r.First(x => x.Measure == "pacbayes-flatness");
        double sigma = flat.Details["sigma"];
        using var w = model.named_parameters().First(p => p.name == "2.weight").parameter.detach().to(ScalarType.Float64);
        using var w0 = init.named_parameters().First(p => p.name == "2.weight").parameter.detach().to(ScalarType.Float64);
        double distance = (w - w0).pow(2).sum().ToDouble();
        Assert.Equal(distance / (4 * sigma * sigma) + Math.Log(60 / sigma) + 10, r.First(x => x.Measure == "pacbayes-init").Value, 10);
        Assert.Equal(w.pow(2).sum().ToDouble() / (4 * sigma * sigma) + Math.Log(60 / sigma) + 10, r.First(x => x.Measure == "pacbayes-orig").Value, 10);
        // An initialization of another architecture is refused by name.
        var other = ModelSpec.Parse("mlp:5-7-3").Build(data, seed: 9);
        Assert.Equal("initialization", Assert.Throws<ArgumentException>(() => PacBayesFlatness.Compute(obj, other, new PacBayesFlatnessOptions { Samples = 2, Depth = 2 })).ParamName);
    }
}
