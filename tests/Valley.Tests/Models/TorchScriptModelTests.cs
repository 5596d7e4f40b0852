using System.Text.Json;
using TorchSharp;
using Valley.Curvature;
using Valley.Curvature.Spectrum;
using Valley.Data;
using Valley.Models;
using Valley.Training;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Models;

/// <summary>
/// TorchScript archives made by scripts/fixtures/make_model_fixtures.py, against PyTorch's exact float64 values (in the JSON
/// next to each archive) and against the built-in spec of the same module.
/// </summary>
public class TorchScriptModelTests
{
    public TorchScriptModelTests() => TestUtil.Init();

    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript", name);

    /// <summary>The fixture's data from its .npz (arrays x, y).</summary>
    static Dataset Data(string name)
    {
        var arrays = NumPyFile.Read(Fixture(name + "_data.npz"));
        var y = arrays["y"];
        return new Dataset(name, arrays["x"], y, TaskKind.Classification, (int)y.max().ToInt64() + 1);
    }

    static JsonElement Reference(string name) => JsonDocument.Parse(File.ReadAllText(Fixture(name + ".json"))).RootElement;

    static double[] Doubles(JsonElement e) => e.EnumerateArray().Select(v => v.GetDouble()).ToArray();

    static double[] Values(Tensor t) => t.to(ScalarType.Float64).cpu().data<double>().ToArray();

    static double RelDiff(double[] a, double[] b) =>
        Math.Sqrt(a.Zip(b, (x, y) => (x - y) * (x - y)).Sum()) / Math.Max(1e-300, Math.Sqrt(b.Sum(x => x * x)));

    [Theory]
    [InlineData("resnet_bn")]
    [InlineData("attention")]
    [InlineData("mlp_twin")]
    public void Float64ValuesMatchPyTorchExactly(string name)
    {
        var reference = Reference(name);
        using var data = Data(name);
        using var model = TorchScriptModel.Load(Fixture(name + ".pt"));
        model.CheckInput(data.ExampleShape, data.NumClasses);
        // The archive's own names, in PyTorch's named_parameters order.
        Assert.Equal(reference.GetProperty("parameters").EnumerateArray().Select(p => p[0].GetString()), model.named_parameters().Select(p => p.name));
        Assert.Equal(reference.GetProperty("buffers").EnumerateArray().Select(p => p[0].GetString()), model.named_buffers().Select(b => b.name));
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float64, BatchSize = 1000 });
        Assert.Equal(reference.GetProperty("count").GetInt64(), obj.Size);

        var (loss, grad) = obj.LossAndGradient();
        Assert.Equal(reference.GetProperty("loss").GetDouble(), loss, 1e-10);
        Assert.True(RelDiff(Values(grad), Doubles(reference.GetProperty("gradient"))) < 1e-8, "gradient");
        grad.Dispose();

        using var v = OwnedTensor.From(Doubles(reference.GetProperty("hvp_vector")));
        using var hv = obj.HessianVectorProduct(v);
        Assert.True(RelDiff(Values(hv), Doubles(reference.GetProperty("hvp"))) < 1e-8, "Hessian-vector product");

        // The whole Hessian from Valley's products, and its spectrum.
        using var eye = torch.eye(obj.Size, dtype: ScalarType.Float64);
        using var h = obj.HessianBlockProduct(eye);
        using var sym = h.add(h.t()).mul(0.5);
        var eig = Values(torch.linalg.eigvalsh(sym));
        var top = Doubles(reference.GetProperty("top3"));
        double scale = Math.Abs(top[0]);
        for (int i = 0; i < 3; i++) Assert.Equal(top[i], eig[^(i + 1)], 1e-8 * scale);
        Assert.Equal(reference.GetProperty("bottom1").GetDouble(), eig[0], 1e-8 * scale);
        Assert.Equal(reference.GetProperty("trace").GetDouble(), eig.Sum(), 1e-7 * scale);

        // Lanczos through the archive finds the same top eigenvalue.
        var lanczos = Lanczos.Compute(new HessianOperator(obj), new LanczosOptions { K = 1, Tolerance = 1e-10, Seed = 1 });
        Assert.Equal(top[0], lanczos.Values[0], 1e-7 * scale);
    }

    [Theory]
    [InlineData("resnet_bn")]
    [InlineData("attention")]
    public void Float32ValuesMatchPyTorchWithinFloat32Precision(string name)
    {
        var reference = Reference(name);
        using var data = Data(name);
        using var model = TorchScriptModel.Load(Fixture(name + ".pt"));
        using var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 1000 });
        var (loss, grad) = obj.LossAndGradient();
        Assert.Equal(reference.GetProperty("loss").GetDouble(), loss, 1e-5 * Math.Max(1, loss));
        Assert.True(RelDiff(Values(grad), Doubles(reference.GetProperty("gradient"))) < 1e-4, "gradient");
        grad.Dispose();
        using var v = OwnedTensor.From(Doubles(reference.GetProperty("hvp_vector"))).to(ScalarType.Float32);
        using var hv = obj.HessianVectorProduct(v);
        Assert.True(RelDiff(Values(hv), Doubles(reference.GetProperty("hvp"))) < 1e-3, "Hessian-vector product");
    }

    [Fact]
    public void BuiltInSpecWithWeightsAndItsArchiveGiveTheSameLossGradientAndTopEigenvalue()
    {
        using var data = Data("mlp_twin");
        using var spec = new ModelSource("mlp:16-12-8-3:tanh", Fixture("mlp_twin_state.pt")).Build(data);
        using var archive = new ModelSource(Fixture("mlp_twin.pt")).Build(data);
        Assert.IsType<TorchScriptModel>(archive);
        Assert.Equal(spec.named_parameters().Select(p => p.name), archive.named_parameters().Select(p => p.name));
        using var a = new Objective(spec, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float64 });
        using var b = new Objective(archive, Losses.CrossEntropy, data, new ObjectiveOptions { DType = ScalarType.Float64 });
        var (la, ga) = a.LossAndGradient();
        var (lb, gb) = b.LossAndGradient();
        Assert.Equal(la, lb, 1e-12);
        Assert.True(RelDiff(Values(ga), Values(gb)) < 1e-12);
        ga.Dispose(); gb.Dispose();
        var o = new LanczosOptions { K = 1, Tolerance = 1e-10, Seed = 3 };
        double ea = Lanczos.Compute(new HessianOperator(a), o).Values[0], eb = Lanczos.Compute(new HessianOperator(b), o).Values[0];
        Assert.Equal(ea, eb, 1e-9 * Math.Abs(ea));
        Assert.Equal(Doubles(Reference("mlp_twin").GetProperty("top3"))[0], eb, 1e-7 * Math.Abs(eb));
    }

    [Fact]
    public void HessianInEvalModeLeavesBatchNormBuffersUnchangedAndTrainModeUsesBatchStatistics()
    {
        using var data = Data("resnet_bn");
        using var model = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
        var before = model.named_buffers().ToDictionary(b => b.name, b => b.buffer.clone());
        using (var obj = new Objective(model, Losses.CrossEntropy, data))
        {
            Lanczos.Compute(new HessianOperator(obj), new LanczosOptions { K = 2, Tolerance = 1e-4, Seed = 1 });
            Assert.False(model.training);
        }
        foreach (var (name, b) in model.named_buffers()) Assert.True(b.equal(before[name]).all().ToBoolean(), name);
        // Train mode normalizes with the batch's statistics: another loss than eval mode's running statistics.
        double eval, train;
        using (var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 1000 })) eval = obj.Evaluate().Loss;
        using (var obj = new Objective(model, Losses.CrossEntropy, data, new ObjectiveOptions { BatchSize = 1000, TrainMode = true })) train = obj.Evaluate().Loss;
        Assert.NotEqual(eval, train, 1e-4);
        Assert.False(model.training);
    }

    [Fact]
    public void RecomputedBatchNormStatisticsAreTheBatchAveragesOfTheLayersInput()
    {
        using var data = Data("resnet_bn");
        using var model = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
        // The first BatchNorm normalizes the stem convolution's output: its statistics over the data, in two batches of 32.
        var stem = model.named_parameters().Single(p => p.name == "stem.weight").parameter;
        double[] expectedMean, expectedVar;
        using (no_grad())
        {
            var halves = new[] { data.X.narrow(0, 0, 32), data.X.narrow(0, 32, 32) }.Select(x => nn.functional.conv2d(x, stem, padding: [1, 1])).ToArray();
            expectedMean = Values(halves.Select(c => c.mean([0, 2, 3])).Aggregate((a, b) => a + b) / 2);
            expectedVar = Values(halves.Select(c => c.var([0, 2, 3], unbiased: true)).Aggregate((a, b) => a + b) / 2);
        }
        WeightAverage.RecomputeBatchNorm(model, data, 32);
        var buffers = model.named_buffers().ToDictionary(b => b.name, b => b.buffer);
        Assert.True(RelDiff(Values(buffers["bn.running_mean"]), expectedMean) < 1e-5);
        Assert.True(RelDiff(Values(buffers["bn.running_var"]), expectedVar) < 1e-5);
        Assert.Equal(2, buffers["bn.num_batches_tracked"].ToInt64());
        Assert.False(model.training);
    }

    [Fact]
    public void SamTrainingChangesTheWeightsAndTheWrittenFilesReloadToTheTrainedWeights()
    {
        using var data = Data("resnet_bn");
        using var model = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
        var before = model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var dir = TestUtil.TempDir("archive-sam");
        var log = new Trainer(model, data, new TrainOptions { Optimizer = Optimizer.Sam, LearningRate = 0.05, BatchSize = 16, Epochs = 1, Rho = 0.05, MonitorEvery = 2, MonitorExamples = 32 })
        {
            OutputFolder = dir, ModelName = new ModelSource(Fixture("resnet_bn.pt")).Name,
        }.Run();
        Assert.NotEmpty(log.Monitor);
        var trained = model.state_dict();
        Assert.Contains(trained, kv => kv.Value.is_floating_point() && !kv.Value.equal(before[kv.Key]).all().ToBoolean());
        Assert.Contains(trained, kv => kv.Key.EndsWith("running_mean") && !kv.Value.equal(before[kv.Key]).all().ToBoolean());
        foreach (var file in new[] { "model.pt", "model.safetensors", "model.torchscript.pt" })
        {
            using var fresh = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
            Weights.Load(fresh, Path.Combine(dir, file));
            foreach (var (name, t) in fresh.state_dict()) Assert.True(t.equal(trained[name]).all().ToBoolean(), $"{file}: {name}");
        }
        // The trained archive is an archive with the trained weights and the same code.
        using var reloaded = TorchScriptModel.Load(Path.Combine(dir, "model.torchscript.pt"));
        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            model.eval();
            Assert.True(reloaded.call(data.X).allclose(model.call(data.X), rtol: 1e-6, atol: 1e-6));
        }
    }

    [Fact]
    public void WeightsOverrideIsCheckedAgainstTheArchivesNamesAndShapes()
    {
        using var model = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
        var e = Assert.Throws<WeightsException>(() => Weights.Load(model, Fixture("mlp_twin_state.pt")));
        Assert.Contains("missing 'stem.weight' [6×1×3×3]", e.Message);
        // 17 entries of the archive missing (6 of them buffers; num_batches_tracked may be absent), 6 of the MLP's unexpected.
        Assert.Contains("(23 mismatches)", e.Message);
        // The archive's names filter parameters (--layer).
        var ps = ParameterSet.From(model, ParameterSet.PrefixFilter("block.bn1,fc"));
        Assert.Equal(["block.bn1.weight", "block.bn1.bias", "fc.weight", "fc.bias"], ps.Names);
    }

    [Theory]
    [InlineData("bad_whole_module.pt", "pickled Python object")]
    [InlineData("bad_state_dict.pt", "a PyTorch state_dict (6 tensors), not a model: pass it as --weights")]
    [InlineData("bad_garbage.zip", "not a TorchScript archive")]
    [InlineData("bad_two_inputs.pt", "forward takes 2 arguments")]
    [InlineData("bad_tuple_output.pt", "returns a tuple of 2 values")]
    [InlineData("resnet_bn.pt", "fails on examples of shape [16]")]
    public void ModelFilesThatAreNoUsableArchiveGiveOneLine(string file, string expected)
    {
        var e = Assert.ThrowsAny<ValleyException>(() => new ModelSource(Fixture(file)).Build([16], 3).Dispose());
        Assert.Contains(expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        if (file.StartsWith("bad_state") || file.StartsWith("bad_whole")) Assert.Contains("torch.jit.script(model).save(", e.Message);
    }

    [Fact]
    public void ArchivesAreRecognizedByContentNotByExtension()
    {
        var copy = Path.Combine(TestUtil.TempDir("archive-ext"), "model.weird");
        File.Copy(Fixture("mlp_twin.pt"), copy, overwrite: true);
        Assert.True(TorchScriptModel.IsArchive(copy));
        Assert.False(TorchScriptModel.IsArchive(Fixture("mlp_twin_state.pt")));
        Assert.False(TorchScriptModel.IsArchive(Fixture("bad_garbage.zip")));
        var source = new ModelSource(copy);
        Assert.True(source.IsArchive);
        Assert.StartsWith("sha256:", source.Digest.Split(':')[0] + ":");
        Assert.NotEqual(source.Digest, new ModelSource(Fixture("resnet_bn.pt")).Digest);
    }
}

/// <summary>docs/library.md's "Your own PyTorch model" snippet, on the fixtures.</summary>
public class TorchScriptLibrarySnippetTests
{
    public TorchScriptLibrarySnippetTests() => TestUtil.Init();

    [Fact]
    public void TheLibraryDocsSnippetRunsOnAnArchive()
    {
        string F(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript", name);
        var dir = TestUtil.TempDir("snippet");
        // As in docs/library.md, with the fixtures' paths.
        var source = new ModelSource(F("resnet_bn.pt"), WeightsPath: F("resnet_bn.pt"));
        using var split = DataSources.Open(F("resnet_bn_data.npz"));
        using var model = source.Build(split.Train);
        using var objective = new Objective(model, Losses.CrossEntropy, split.Train,
            new ObjectiveOptions { ParameterFilter = ParameterSet.PrefixFilter("fc") });
        using var hessian = Hessian.Of(objective);
        double top = hessian.TopEigenvalues(1).Values[0];
        Assert.True(top > 0);

        using var archive = TorchScriptModel.Load(F("resnet_bn.pt"));
        archive.CheckInput(split.Train.ExampleShape, split.Train.NumClasses);
        new Trainer(archive, split.Train, new TrainOptions { Optimizer = Optimizer.Sam, Epochs = 1 }) { OutputFolder = Path.Combine(dir, "sam") }.Run();
        Weights.Save(archive, Path.Combine(dir, "trained.safetensors"));
        archive.SaveArchive(Path.Combine(dir, "trained.torchscript.pt"));
        using var back = TorchScriptModel.Load(Path.Combine(dir, "trained.torchscript.pt"));
        Weights.Load(back, Path.Combine(dir, "trained.safetensors"));
        Assert.Equal(archive.named_parameters().Select(p => p.name), back.named_parameters().Select(p => p.name));
    }
}
