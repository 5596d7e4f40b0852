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

    /// <summary>The closure of the reference implementation: the loss, its backward pass, the loss.</summary>
    static Func<Tensor> Closure(nn.Module<Tensor, Tensor> model, Tensor x, Tensor y) => () =>
    {
        var l = Losses.CrossEntropy(model.call(x), y);
        l.backward();
        return l;
    };

    static Func<Tensor> Closure(nn.Module<Tensor, Tensor> model, Dataset data) => Closure(model, data.X, data.Y);

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
        using var sam = new SharpnessAwareMinimization(model, opt, SamOptions.ForSam(0.05));
        sam.zero_grad();
        Closure(model, data)();                                   // the gradient at w, as the reference implementation expects
        sam.step(Closure(model, data));
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
        using var asam = new SharpnessAwareMinimization(model, opt, SamOptions.ForAsam());
        asam.zero_grad();
        Closure(model, data)();
        asam.step(Closure(model, data));
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
        var (c, d3) = Setup();
        d3.Dispose();
        TorchSharp.Modules.OptimizerHelper Make(nn.Module m) =>
            kind == "sgd" ? optim.SGD(m.parameters(), 0.1, momentum: 0.9, weight_decay: 1e-3) : optim.Adam(m.parameters(), 0.01, weight_decay: 1e-3);
        var ob = Make(b);
        using var samA = new SharpnessAwareMinimization(a, Make(a), SamOptions.ForSam(0));
        using var samC = new SharpnessAwareMinimization(c, Make(c), SamOptions.ForSam(0));
        for (int s = 0; s < 3; s++)
        {
            samA.zero_grad();
            Closure(a, data)();
            samA.step(Closure(a, data));
            samC.step([new MicroBatch(Closure(c, data), data.Count)]);
            ob.zero_grad();
            Losses.CrossEntropy(b.call(data.X), data.Y).backward();
            ob.step();
        }
        Assert.Equal(Flat(b).data<double>().ToArray(), Flat(a).data<double>().ToArray());
        Assert.Equal(Flat(b).data<double>().ToArray(), Flat(c).data<double>().ToArray());
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
        using var sam = new SharpnessAwareMinimization(model, opt, SamOptions.ForSam());
        sam.step([new MicroBatch(Closure(model, x1, y1), 16), new MicroBatch(Closure(model, x2, y2), 16)]);
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
        using var sam = new SharpnessAwareMinimization(a, optim.SGD(a.parameters(), 0.1), SamOptions.ForSam(0.5));
        Closure(a, data)();
        sam.step(Closure(a, data));
        using (no_grad()) b.call(data.X); // one forward in train mode: what the first pass does to the statistics
        var sa = a.state_dict();
        var sb = b.state_dict();
        foreach (var name in sa.Keys.Where(k => k.Contains("running_") || k.Contains("num_batches_tracked")))
            Assert.True(sa[name].eq(sb[name]).all().ToBoolean(), name);
        Assert.Equal(1L, sa["bn1.num_batches_tracked"].ToInt64());
    }

    static byte[] State(nn.Module m) => m.state_dict().Values.SelectMany(t => t.contiguous().bytes.ToArray()).ToArray();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void FirstAndSecondStepByHandEqualStepWithAClosureBitForBit(bool adaptive)
    {
        // BatchNorm, momentum and weight decay in the base optimizer: everything a step carries from one to the next.
        var g = new Generator(5);
        using var data = new Dataset("imgs", rand([4, 1, 28, 28], generator: g), randint(0, 10, [4], generator: g), TaskKind.Classification, 10);
        var options = adaptive ? SamOptions.ForAsam() : SamOptions.ForSam(0.2);
        var models = Enumerable.Range(0, 3).Select(_ => ModelSpec.Parse("resnet:2").Build(data, seed: 4)).ToArray();
        var sams = models.Select(m => new SharpnessAwareMinimization(m, optim.SGD(m.parameters(), 0.05, momentum: 0.9, weight_decay: 1e-3), options)).ToArray();
        foreach (var m in models) m.train();
        for (int step = 0; step < 2; step++)
        {
            // By hand, as in the reference implementation's README.
            Closure(models[0], data)();
            sams[0].first_step(zero_grad: true);
            Closure(models[0], data)();
            sams[0].second_step(zero_grad: true);
            // step(closure).
            Closure(models[1], data)();
            sams[1].step(Closure(models[1], data));
            sams[1].zero_grad();
            // m-sharpness with one micro-batch.
            sams[2].step([new MicroBatch(Closure(models[2], data), data.Count)]);
        }
        Assert.Equal(State(models[0]), State(models[1]));
        Assert.Equal(State(models[0]), State(models[2]));
        Assert.NotEqual(State(models[0]), State(ModelSpec.Parse("resnet:2").Build(data, seed: 4)));
        foreach (var s in sams) s.Dispose();
    }

    [Fact]
    public void LearningRatesAndStateAreTheBaseOptimizersAndAStateDictResumesBitForBit()
    {
        var (a, data) = Setup();
        using var _ = data;
        var sgd = optim.SGD(a.parameters(), 0.1, momentum: 0.9);
        using var sam = new SharpnessAwareMinimization(a, sgd, SamOptions.ForSam());
        foreach (var group in sam.ParamGroups) group.LearningRate = 0.05;
        Assert.Equal(0.05, sgd.ParamGroups.Single().LearningRate);
        sam.to(CPU);
        for (int s = 0; s < 2; s++) { sam.zero_grad(); Closure(a, data)(); sam.step(Closure(a, data)); }
        var file = Path.Combine(TestUtil.TempDir("sam-state"), "sam.bin");
        sam.save_state_dict(file);
        // A second SAM on a copy of the weights, with the momentum buffers loaded from the file, continues identically.
        var (b, d2) = Setup();
        d2.Dispose();
        b.load_state_dict(a.state_dict());
        using var sam2 = new SharpnessAwareMinimization(b, optim.SGD(b.parameters(), 0.05, momentum: 0.9), SamOptions.ForSam());
        sam2.load_state_dict(file);
        // Without the momentum buffers the step differs: the state matters.
        var (c, d3) = Setup();
        d3.Dispose();
        c.load_state_dict(a.state_dict());
        using var sam3 = new SharpnessAwareMinimization(c, optim.SGD(c.parameters(), 0.05, momentum: 0.9), SamOptions.ForSam());
        foreach (var (m, o) in new[] { (a, sam), (b, sam2), (c, sam3) }) { o.zero_grad(); Closure(m, data)(); o.step(Closure(m, data)); }
        Assert.Equal(Flat(a).data<double>().ToArray(), Flat(b).data<double>().ToArray());
        Assert.NotEqual(Flat(a).data<double>().ToArray(), Flat(c).data<double>().ToArray());
    }

    [Fact]
    public void MisuseIsRefusedAndAFailingClosureLeavesTheWeightsAtW()
    {
        var (model, data) = Setup();
        using var _ = data;
        using var sam = new SharpnessAwareMinimization(model, optim.SGD(model.parameters(), 0.1), SamOptions.ForSam());
        Assert.Contains("backward", Assert.Throws<InvalidOperationException>(() => sam.first_step()).Message);
        Assert.Throws<InvalidOperationException>(() => sam.second_step());
        Assert.Throws<ArgumentNullException>(() => sam.step((Func<Tensor>?)null));
        Assert.Throws<ArgumentException>(() => sam.step(Array.Empty<MicroBatch>()));
        Assert.Equal("Rho", Assert.Throws<ArgumentOutOfRangeException>(() => new SharpnessAwareMinimization(model, optim.SGD(model.parameters(), 0.1), SamOptions.ForSam(-1))).ParamName);
        Assert.Equal("Eta", Assert.Throws<ArgumentOutOfRangeException>(() => new SharpnessAwareMinimization(model, optim.SGD(model.parameters(), 0.1), SamOptions.ForAsam(eta: double.NaN))).ParamName);
        var w = Flat(model).data<double>().ToArray();
        Closure(model, data)();
        Assert.Throws<InvalidDataException>(() => sam.step(() => throw new InvalidDataException("the closure fails")));
        Assert.Equal(w, Flat(model).data<double>().ToArray());
        // Not left at a perturbed point: a new step may begin.
        sam.zero_grad();
        Closure(model, data)();
        sam.first_step(zero_grad: true);
        Closure(model, data)();
        sam.second_step();
        Assert.NotEqual(w, Flat(model).data<double>().ToArray());
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
