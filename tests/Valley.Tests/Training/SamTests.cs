using TorchSharp.Modules;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Valley.Training;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Training;

public class SamTests
{
    public SamTests() => TestUtil.Init();

    static (nn.Module<Tensor, Tensor> Model, Dataset Data) Setup(string spec = "mlp:6-5-3:tanh")
    {
        var data = Synthetic.GaussianMixture(32, 6, 3, seed: 2);
        var d64 = data.To(CPU, ScalarType.Float64);
        data.Dispose();
        var model = ModelSpec.Parse(spec).Build(d64, seed: 1);
        model.to(ScalarType.Float64);
        return (model, d64);
    }

    static Tensor Flat(nn.Module m) => cat(m.parameters().Select(p => p.detach().reshape(-1)).ToArray());

    static Tensor GradAt(nn.Module<Tensor, Tensor> model, Dataset data, Tensor w)
    {
        var ps = new ParameterSet(model.named_parameters().Select(p => (p.name, p.parameter)));
        using var snap = ps.Snapshot();
        ps.SetFlat(w);
        model.zero_grad();
        Losses.CrossEntropy(model.call(data.X), data.Y).backward();
        var g = cat(model.parameters().Select(p => p.grad!.reshape(-1)).ToArray()).clone();
        snap.Restore();
        return g;
    }

    [Fact]
    public void SamStepEqualsAHandComputation()
    {
        var (model, data) = Setup();
        using var _ = data;
        var w0 = Flat(model).clone();
        var g = GradAt(model, data, w0);
        var eps = 0.05 * g / (g.norm() + 1e-12);                 // ε̂ = ρ g/‖g‖ (Foret et al. eq. 2)
        var gPert = GradAt(model, data, w0 + eps);
        var expected = w0 - 0.1 * gPert;                          // plain SGD base step with the perturbed gradient
        var opt = optim.SGD(model.parameters(), 0.1);
        var sam = new SharpnessAwareMinimization(model, opt, SamOptions.ForSam(0.05));
        sam.Step([(() => Losses.CrossEntropy(model.call(data.X), data.Y), data.Count)]);
        Assert.True((Flat(model) - expected).abs().max().ToDouble() < 1e-14);
    }

    [Fact]
    public void AsamStepEqualsAHandComputation()
    {
        var (model, data) = Setup();
        using var _ = data;
        var w0 = Flat(model).clone();
        var g = GradAt(model, data, w0);
        // T_w = |w| + η on weight matrices, 1 on biases (Kwon et al. 2021 eq. 8): ε = ρ T² g / ‖T g‖.
        var t = cat(model.named_parameters().Select(p => p.parameter.dim() >= 2 ? p.parameter.detach().abs().reshape(-1) + 0.01 : ones(p.parameter.numel(), dtype: ScalarType.Float64)).ToArray());
        var eps = 0.5 * t * t * g / ((t * g).norm() + 1e-12);
        var expected = w0 - 0.1 * GradAt(model, data, w0 + eps);
        var opt = optim.SGD(model.parameters(), 0.1);
        new SharpnessAwareMinimization(model, opt, SamOptions.ForAsam()).Step([(() => Losses.CrossEntropy(model.call(data.X), data.Y), data.Count)]);
        Assert.True((Flat(model) - expected).abs().max().ToDouble() < 1e-14);
    }

    [Theory]
    [InlineData("sgd")]
    [InlineData("adam")]
    public void RhoZeroEqualsTheBaseOptimizerStepExactly(string kind)
    {
        var (a, data) = Setup();
        using var _ = data;
        var (b, d2) = Setup();
        d2.Dispose();
        optim.Optimizer Make(nn.Module m) => kind == "sgd" ? optim.SGD(m.parameters(), 0.1, momentum: 0.9, weight_decay: 1e-3) : optim.Adam(m.parameters(), 0.01, weight_decay: 1e-3);
        var oa = Make(a);
        var ob = Make(b);
        var sam = new SharpnessAwareMinimization(a, oa, SamOptions.ForSam(0));
        for (int s = 0; s < 3; s++)
        {
            sam.Step([(() => Losses.CrossEntropy(a.call(data.X), data.Y), data.Count)]);
            ob.zero_grad();
            Losses.CrossEntropy(b.call(data.X), data.Y).backward();
            ob.step();
        }
        Assert.Equal(Flat(b).data<double>().ToArray(), Flat(a).data<double>().ToArray());
    }

    [Fact]
    public void MSharpnessWithOneMicroBatchEqualsSamAndWithSeveralAveragesTheirPerturbedGradients()
    {
        var (model, data) = Setup();
        using var _ = data;
        var w0 = Flat(model).clone();
        // Hand computation for two micro-batches of 16: each gets its own ε̂ from its own gradient.
        Tensor Expected()
        {
            var sum = zeros_like(w0);
            foreach (var half in new[] { data.Slice(0, 16), data.Slice(16, 16) })
            {
                var g = GradAt(model, half, w0);
                sum += 0.5 * GradAt(model, half, w0 + 0.05 * g / (g.norm() + 1e-12));
            }
            return w0 - 0.1 * sum;
        }
        var expected = Expected();
        var opt = optim.SGD(model.parameters(), 0.1);
        var x1 = data.X.narrow(0, 0, 16); var y1 = data.Y.narrow(0, 0, 16);
        var x2 = data.X.narrow(0, 16, 16); var y2 = data.Y.narrow(0, 16, 16);
        new SharpnessAwareMinimization(model, opt, SamOptions.ForSam()).Step([
            (() => Losses.CrossEntropy(model.call(x1), y1), 16), (() => Losses.CrossEntropy(model.call(x2), y2), 16)]);
        Assert.True((Flat(model) - expected).abs().max().ToDouble() < 1e-14);
    }

    [Fact]
    public void BatchNormRunningStatisticsChangeOnlyInTheFirstPass()
    {
        var g = new Generator(3);
        using var data = new Dataset("imgs", rand([8, 1, 28, 28], generator: g), randint(0, 10, [8], generator: g), TaskKind.Classification, 10);
        var a = ModelSpec.Parse("resnet:2").Build(data, seed: 4);
        var b = ModelSpec.Parse("resnet:2").Build(data, seed: 4);
        a.train(); b.train();
        var sam = new SharpnessAwareMinimization(a, optim.SGD(a.parameters(), 0.1), SamOptions.ForSam(0.5));
        sam.Step([(() => Losses.CrossEntropy(a.call(data.X), data.Y), 8)]);
        using (no_grad()) b.call(data.X); // one forward in train mode: what the first pass does to the statistics
        var sa = a.state_dict();
        var sb = b.state_dict();
        foreach (var name in sa.Keys.Where(k => k.Contains("running_") || k.Contains("num_batches_tracked")))
            Assert.True(sa[name].eq(sb[name]).all().ToBoolean(), name);
        Assert.Equal(1L, sa["bn1.num_batches_tracked"].ToInt64());
    }

    [Fact]
    public void WeightAverageEqualsTheMeanOfTheSnapshots()
    {
        var (model, data) = Setup();
        using var _ = data;
        using var avg = new WeightAverage(model);
        var snapshots = new List<Tensor>();
        var ps = new ParameterSet(model.named_parameters().Select(p => (p.name, p.parameter)));
        for (int i = 0; i < 5; i++)
        {
            ps.SetFlat(randn(ps.Size, dtype: ScalarType.Float64, generator: new Generator((ulong)i)));
            snapshots.Add(ps.GetFlat());
            avg.Update(model);
        }
        avg.CopyTo(model);
        var mean = stack(snapshots).mean([0]);
        Assert.True((ps.GetFlat() - mean).abs().max().ToDouble() < 1e-14);
    }
}
