using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Valley.Sharpness;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Sharpness;

/// <summary>Every measure evaluates with the objective it is given: its parameter filter, train mode and dtype.</summary>
public class ObjectiveOptionsTests
{
    public ObjectiveOptionsTests() => TestUtil.Init();

    static byte[] Bytes(nn.Module m) => m.state_dict().Values.SelectMany(t => t.contiguous().bytes.ToArray()).ToArray();

    [Fact]
    public void AParameterFilterPerturbsOnlyTheSelectedParametersExactlyAsIfTheOthersWereFrozen()
    {
        using var raw = Synthetic.GaussianMixture(96, 6, 3, seed: 11);
        using var data = raw.To(CPU, ScalarType.Float64);
        var a = ModelSpec.Parse("mlp:6-8-3").Build(data, seed: 4);
        var b = ModelSpec.Parse("mlp:6-8-3").Build(data, seed: 4);
        a.to(ScalarType.Float64); b.to(ScalarType.Float64);
        // The reference: the same network with layer 0 frozen, so that its parameters are the last layer's alone.
        foreach (var (name, p) in b.named_parameters()) if (!name.StartsWith("2.", StringComparison.Ordinal)) p.requires_grad_(false);
        var layer0 = a.named_parameters().Where(p => p.name.StartsWith("0.", StringComparison.Ordinal)).Select(p => p.parameter).ToList();
        var layer0Before = layer0.Select(p => p.detach().clone()).ToList();
        var before = Bytes(a);
        bool touched = false;
        // Looks at layer 0 at every evaluation, i.e. while the last layer is perturbed.
        LossFunction watching = (output, target) =>
        {
            for (int i = 0; i < layer0.Count; i++) touched |= !layer0[i].detach().eq(layer0Before[i]).all().ToBoolean();
            return Losses.CrossEntropy(output, target);
        };
        using var filtered = new Objective(a, watching, data, new ObjectiveOptions { ParameterFilter = n => n.StartsWith("2.", StringComparison.Ordinal) });
        using var frozen = new Objective(b, Losses.CrossEntropy, data);
        Assert.Equal(frozen.Size, filtered.Size);
        foreach (bool adaptive in new[] { false, true })
        {
            var wc = new WorstCaseSharpnessOptions { Adaptive = adaptive, Examples = 96, BatchSize = 32, Steps = 5, Seed = 2 };
            Assert.Equal(WorstCaseSharpness.Compute(frozen, wc).Value, WorstCaseSharpness.Compute(filtered, wc).Value);
        }
        var avg = new AverageCaseSharpnessOptions { Examples = 96, BatchSize = 32, Samples = 4, Seed = 2 };
        var filteredAverage = AverageCaseSharpness.Compute(filtered, avg).Value;
        Assert.Equal(AverageCaseSharpness.Compute(frozen, avg).Value, filteredAverage);
        Assert.False(touched, "a weight outside the filter changed during a measure");
        Assert.Equal(before, Bytes(a));
        // And the filter matters: over all parameters the values differ.
        using var all = new Objective(a, Losses.CrossEntropy, data);
        Assert.NotEqual(filteredAverage, AverageCaseSharpness.Compute(all, avg).Value);
    }

    /// <summary>A model whose output is three times larger in train mode than in eval mode.</summary>
    sealed class TrainTimesThree : nn.Module<Tensor, Tensor>
    {
        readonly QuadraticModule inner;
        public TrainTimesThree(QuadraticModule q) : base("TrainTimesThree") { inner = q; RegisterComponents(); }
        public override Tensor forward(Tensor x) => training ? 3 * inner.call(x) : inner.call(x);
    }

    [Fact]
    public void TrainModeIsHonouredAndTheModelKeepsItsMode()
    {
        double[] diagonal = [4.0, 1.0, 0.5, 0.25];
        var model = new TrainTimesThree(new QuadraticModule(diag(tensor(diagonal, ScalarType.Float64)), zeros(4, dtype: ScalarType.Float64), zeros(4, dtype: ScalarType.Float64)));
        using var data = new Dataset("dummy", zeros([64, 1], dtype: ScalarType.Float64), zeros([64], dtype: ScalarType.Float64), TaskKind.Regression, 1);
        SharpnessResult[] Measure(bool trainMode)
        {
            using var obj = new Objective(model, QuadraticModule.MeanOutput, data, new ObjectiveOptions { TrainMode = trainMode });
            return
            [
                WorstCaseSharpness.Compute(obj, new WorstCaseSharpnessOptions { Rho = 0.1, Examples = 64, BatchSize = 32, Steps = 5 }),
                AverageCaseSharpness.Compute(obj, new AverageCaseSharpnessOptions { Rho = 0.1, Examples = 64, BatchSize = 32, Samples = 5 }),
            ];
        }
        model.train();
        var eval = Measure(trainMode: false);
        Assert.True(model.training);
        model.eval();
        var train = Measure(trainMode: true);
        Assert.False(model.training);
        Assert.True(eval[0].Value > 0);
        for (int i = 0; i < eval.Length; i++)
            Assert.True(Math.Abs(train[i].Value - 3 * eval[i].Value) <= 1e-9 * Math.Abs(eval[i].Value), $"{train[i].Measure}: {train[i].Value} vs 3 × {eval[i].Value}");
    }

    [Fact]
    public void TheObjectivesDTypeIsHonoured()
    {
        using var data = Synthetic.GaussianMixture(64, 5, 3, seed: 12);
        var options = new WorstCaseSharpnessOptions { Examples = 64, BatchSize = 32, Steps = 4, Seed = 1 };
        double Measure(nn.Module<Tensor, Tensor> model, ObjectiveOptions objectiveOptions, Dataset d)
        {
            using var obj = new Objective(model, Losses.CrossEntropy, d, objectiveOptions);
            return WorstCaseSharpness.Compute(obj, options).Value;
        }
        double single = Measure(ModelSpec.Parse("mlp:5-7-3").Build(data, seed: 3), new ObjectiveOptions(), data);
        var reference = ModelSpec.Parse("mlp:5-7-3").Build(data, seed: 3);
        reference.to(ScalarType.Float64);
        using var data64 = data.To(CPU, ScalarType.Float64);
        double expected = Measure(reference, new ObjectiveOptions(), data64);
        double asked = Measure(ModelSpec.Parse("mlp:5-7-3").Build(data, seed: 3), new ObjectiveOptions { DType = ScalarType.Float64 }, data);
        Assert.Equal(expected, asked);
        Assert.NotEqual(expected, single);
    }
}
