using System.Globalization;
using System.Text.Json;
using Valley.Cli;
using Valley.Data;
using Valley.Models;
using Valley.Training;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Cli;

/// <summary>The commands on a TorchScript archive (the traced twin of mlp:16-12-8-3:tanh and its data as CSV).</summary>
public class ArchiveCommandTests
{
    public ArchiveCommandTests() => TestUtil.Init();

    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript", name);

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        return (code, o.ToString(), e.ToString());
    }

    /// <summary>mlp_twin's data (from its .npz) as a CSV folder: the first 48 examples train.csv, the last 16 test.csv.</summary>
    static string CsvData()
    {
        var arrays = NumPyFile.Read(Fixture("mlp_twin_data.npz"));
        var x = arrays["x"].data<float>().ToArray();
        var y = arrays["y"].data<long>().ToArray();
        var dir = TestUtil.TempDir("twin-csv");
        var header = string.Join(",", Enumerable.Range(0, 16).Select(i => $"f{i}")) + ",label";
        IEnumerable<string> Rows(int from, int to) => Enumerable.Range(from, to - from).Select(i =>
            string.Join(",", x.Skip(16 * i).Take(16).Select(v => v.ToString("R", CultureInfo.InvariantCulture))) + "," + y[i]);
        File.WriteAllLines(Path.Combine(dir, "train.csv"), new[] { header }.Concat(Rows(0, 48)));
        File.WriteAllLines(Path.Combine(dir, "test.csv"), new[] { header }.Concat(Rows(48, 64)));
        return dir;
    }

    [Fact]
    public void EvalOnAnArchiveEqualsEvalOnTheBuiltInSpecWithItsStateDict()
    {
        var data = CsvData();
        var (code, json, err) = Run("eval", "--model", Fixture("mlp_twin.pt"), "--data", data, "--subset", "0", "--dtype", "float64", "--format", "json");
        Assert.True(code == 0, err);
        var (code2, json2, err2) = Run("eval", "--model", "mlp:16-12-8-3:tanh", "--weights", Fixture("mlp_twin_state.pt"), "--data", data, "--subset", "0", "--dtype", "float64", "--format", "json");
        Assert.True(code2 == 0, err2);
        var a = JsonDocument.Parse(json).RootElement;
        var b = JsonDocument.Parse(json2).RootElement;
        Assert.Equal(b.GetProperty("train_loss").GetDouble(), a.GetProperty("train_loss").GetDouble(), 1e-12);
        Assert.Equal(b.GetProperty("test_loss").GetDouble(), a.GetProperty("test_loss").GetDouble(), 1e-12);
        Assert.Equal(b.GetProperty("gradient_norm").GetDouble(), a.GetProperty("gradient_norm").GetDouble(), 1e-12);
        Assert.Equal(335, a.GetProperty("parameters").GetInt64());
    }

    [Fact]
    public void HessianOnAnArchiveFiltersLayersByTheArchivesNames()
    {
        var data = CsvData();
        var outDir = Path.Combine(TestUtil.TempDir("archive-hessian"), "h");
        var (code, _, err) = Run("hessian", "--model", Fixture("mlp_twin.pt"), "--data", data, "--subset", "0", "--dtype", "float64", "--layer", "4",
            "--top", "2", "--exact", "--tol", "1e-8", "--out", outDir);
        Assert.True(code == 0, err);
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement;
        Assert.Equal(8 * 3 + 3, json.GetProperty("parameters").GetInt32());
        var report = json.GetProperty("report");
        var exact = report.GetProperty("exact").GetProperty("eigenvalues").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        Assert.Equal(exact[^1], report.GetProperty("top").GetProperty("values")[0].GetDouble(), 6);
        // Another archive under the same path is another run: its digest is an input.
        var inputs = json.GetProperty("inputs").ToString();
        Assert.Contains(new ModelSource(Fixture("mlp_twin.pt")).Digest, inputs);
    }

    [Fact]
    public void TrainWithSamOnAnArchiveWritesStateDictsAndAnArchiveThenInterpolateRunsBetweenThem()
    {
        var data = CsvData();
        var dir = Path.Combine(TestUtil.TempDir("archive-train"), "t");
        var (code, _, err) = Run("train", "--model", Fixture("mlp_twin.pt"), "--data", data, "--optimizer", "sam", "--epochs", "1", "--batch-size", "16",
            "--lr", "0.1", "--monitor-every", "2", "--monitor-examples", "32", "--out", dir);
        Assert.True(code == 0, err);
        foreach (var f in new[] { "model.dat", "model.pt", "model.safetensors", "model.torchscript.pt" }) Assert.True(File.Exists(Path.Combine(dir, f)), f);
        using (var trained = TorchScriptModel.Load(Path.Combine(dir, "model.torchscript.pt")))
        using (var original = TorchScriptModel.Load(Fixture("mlp_twin.pt")))
        {
            Assert.Equal(original.named_parameters().Select(p => p.name), trained.named_parameters().Select(p => p.name));
            Assert.Contains(original.named_parameters().Zip(trained.named_parameters()), pair => !pair.First.parameter.equal(pair.Second.parameter).all().ToBoolean());
            // The state_dict loads into the built-in spec too: the archive's names are PyTorch's.
            using var spec = new ModelSource("mlp:16-12-8-3:tanh", Path.Combine(dir, "model.pt")).Build([16], 3);
            foreach (var ((_, a), (_, b)) in spec.named_parameters().Zip(trained.named_parameters())) Assert.True(a.equal(b).all().ToBoolean());
        }
        var land = Path.Combine(TestUtil.TempDir("archive-interp"), "i");
        (code, _, err) = Run("landscape", "interpolate", "--model", Fixture("mlp_twin.pt"), "--data", data, "--from", Fixture("mlp_twin.pt"),
            "--to", Path.Combine(dir, "model.torchscript.pt"), "--points", "5", "--range", "0:1", "--out", land, "--format", "json");
        Assert.True(code == 0, err);
        var grid = JsonDocument.Parse(File.ReadAllText(Path.Combine(land, "grid.json"))).RootElement.ToString();
        Assert.Contains("train_loss", grid);
    }

    [Fact]
    public void SwaOnAnArchiveWithBatchNormRecomputesItsStatisticsAndTheLandscapeRecomputesThemAtEveryPoint()
    {
        var data = Fixture("resnet_bn_data.npz");
        var dir = Path.Combine(TestUtil.TempDir("archive-swa"), "t");
        var (code, _, err) = Run("train", "--model", Fixture("resnet_bn.pt"), "--data", data, "--optimizer", "asam", "--epochs", "2", "--swa-start", "1",
            "--batch-size", "16", "--lr", "0.05", "--out", dir);
        Assert.True(code == 0, err);
        using var ds = DataSources.Open(data).Train;
        // The SWA weights' BatchNorm statistics are those of a recomputation over the training data: recomputing again changes nothing.
        using var model = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
        Weights.Load(model, Path.Combine(dir, "model.pt"));
        var saved = model.named_buffers().ToDictionary(b => b.name, b => b.buffer.clone());
        Assert.NotEqual(saved["bn.running_mean"].data<float>().ToArray(), TorchScriptModel.Load(Fixture("resnet_bn.pt")).named_buffers().First().buffer.data<float>().ToArray());
        WeightAverage.RecomputeBatchNorm(model, ds, 2048);
        foreach (var (name, b) in model.named_buffers()) Assert.True(b.allclose(saved[name], rtol: 1e-5, atol: 1e-6), name);

        // A 1D slice with --recompute-bn through the archive at α = 0: the loss after recomputing at the trained weights.
        using var perturbed = TorchScriptModel.Load(Fixture("resnet_bn.pt"));
        Weights.Load(perturbed, Path.Combine(dir, "model.pt"));
        using (no_grad()) foreach (var (_, b) in perturbed.named_buffers()) if (b.is_floating_point()) b.mul_(3);
        var weights = Path.Combine(dir, "perturbed.safetensors");
        Weights.Save(perturbed, weights);
        WeightAverage.RecomputeBatchNorm(perturbed, ds, 10_000);
        double expected;
        using (var obj = new Valley.Curvature.Objective(perturbed, Valley.Curvature.Losses.CrossEntropy, ds)) expected = obj.Evaluate().Loss;
        var land = Path.Combine(TestUtil.TempDir("archive-bn-land"), "l");
        (code, _, err) = Run("landscape", "1d", "--model", Fixture("resnet_bn.pt"), "--weights", weights, "--data", data, "--points", "3", "--recompute-bn", "--out", land);
        Assert.True(code == 0, err);
        var centre = JsonDocument.Parse(File.ReadAllText(Path.Combine(land, "grid.json"))).RootElement.GetProperty("points").EnumerateArray().Single(q => q.GetProperty("x").GetDouble() == 0);
        Assert.Equal(expected, centre.GetProperty("train_loss").GetDouble(), 1e-5);
        // The trajectory of the run's checkpoints (weights with the archive's names).
        (code, _, err) = Run("landscape", "trajectory", "--model", Fixture("resnet_bn.pt"), "--data", data, "--checkpoints", Path.Combine(dir, "checkpoints"),
            "--points", "3x3", "--out", Path.Combine(TestUtil.TempDir("archive-traj"), "t"));
        Assert.True(code == 0, err);
    }

    [Fact]
    public void InfoShowsTheArchivesParameterTableAndBuffers()
    {
        Assert.Equal(0, Run("info", "--model", Fixture("resnet_bn.pt")).Code);
        var (code, json, err) = Run("info", "--model", Fixture("resnet_bn.pt"), "--format", "json");
        Assert.True(code == 0, err);
        var info = JsonDocument.Parse(json).RootElement;
        Assert.Equal(766, info.GetProperty("parameters").GetInt64());
        var names = info.GetProperty("parameter_table").EnumerateArray().Select(e => e.GetProperty("name").GetString()).ToList();
        Assert.Equal("stem.weight", names[0]);
        Assert.Contains("block.bn2.bias", names);
        Assert.Contains(info.GetProperty("buffers").EnumerateArray(), b => b.GetProperty("name").GetString() == "block.bn1.running_var");
    }

    [Theory]
    [InlineData("bad_whole_module.pt", "torch.jit.script(model).save(")]
    [InlineData("bad_state_dict.pt", "pass it as --weights with a built-in spec")]
    [InlineData("bad_garbage.zip", "not a TorchScript archive")]
    [InlineData("bad_two_inputs.pt", "forward takes 2 arguments")]
    [InlineData("bad_tuple_output.pt", "returns a tuple of 2 values")]
    public void BadModelFilesGiveOneLineErrorAndExitCode1(string file, string expected)
    {
        foreach (var command in new[] { new[] { "eval" }, new[] { "hessian", "--top", "1", "--out", TestUtil.TempDir("bad-model") } })
        {
            var (code, _, err) = Run([.. command, "--model", Fixture(file), "--data", CsvData()]);
            Assert.Equal(ValleyCli.ExitBadInput, code);
            Assert.Contains(expected, err);
            Assert.Single(err.Trim().Split('\n'));
            Assert.StartsWith("error: ", err);
        }
    }

    /// <summary>
    /// An error raised inside the archive's code during a computation (not at loading) is one line with the interpreter's
    /// reason and exit code 1, not an internal error: BatchNorm1d on a last batch of one example in train mode, and an
    /// archive that raises on large inputs.
    /// </summary>
    [Fact]
    public void AnErrorInsideTheArchivesCodeIsOneLineWithItsReason()
    {
        // 9 examples with 5 features and 3 classes; batches of 4 leave a last batch of one.
        var dir = TestUtil.TempDir("archive-errors");
        var csv = Path.Combine(dir, "d.csv");
        File.WriteAllLines(csv, new[] { "a,b,c,d,e,label" }.Concat(Enumerable.Range(0, 9).Select(i =>
            string.Join(",", Enumerable.Range(0, 5).Select(j => ((i * 5 + j) % 7 * 0.3 - 1).ToString(CultureInfo.InvariantCulture))) + "," + (i % 3))));
        var big = Path.Combine(dir, "big.csv");
        File.WriteAllLines(big, File.ReadAllLines(csv).Select((l, i) => i == 3 ? "5000,0,0,0,0,1" : l));
        foreach (var (args, expected) in new (string[], string)[]
        {
            (["train", "--model", Fixture("bad_bn1d.pt"), "--data", csv, "--epochs", "1", "--batch-size", "4", "--out", Path.Combine(dir, "t")],
                "Expected more than 1 value per channel when training"),
            (["eval", "--model", Fixture("bad_bn1d.pt"), "--data", csv, "--batch-size", "4", "--train-mode"], "Expected more than 1 value per channel when training"),
            (["eval", "--model", Fixture("bad_raises.pt"), "--data", big, "--subset", "0"], "input too large"),
        })
        {
            var (code, _, err) = Run(args);
            Assert.True(code == ValleyCli.ExitBadInput, $"{string.Join(" ", args)}: exit {code}: {err}");
            Assert.Contains(expected, err);
            Assert.Contains("the TorchScript model failed on a batch", err);
            Assert.Single(err.Trim().Split('\n'));
        }
    }

    /// <summary>
    /// Interpolation moves the weights only: between models whose BatchNorm statistics differ, the α = 0 end would be
    /// evaluated with the other model's statistics, so it is refused unless --recompute-bn recomputes them at every point.
    /// </summary>
    [Fact]
    public void InterpolatingModelsWithOtherBatchNormStatisticsNeedsRecomputation()
    {
        var dir = TestUtil.TempDir("interp-bn");
        string a = Path.Combine(dir, "a.dat"), b = Path.Combine(dir, "b.dat");
        using (var model = TorchScriptModel.Load(Fixture("resnet_bn.pt")))
        {
            Valley.Models.Weights.Save(model, a);
            using (TorchSharp.torch.no_grad())
                foreach (var (name, buffer) in model.named_buffers())
                    if (name.EndsWith("running_mean", StringComparison.Ordinal)) buffer.add_(0.5);
            Valley.Models.Weights.Save(model, b);
        }
        string[] Args(string o, params string[] more) => ["landscape", "interpolate", "--model", Fixture("resnet_bn.pt"), "--data", Fixture("resnet_bn_data.npz"),
            "--from", a, "--to", b, "--points", "3", "--range", "0:1", "--out", Path.Combine(dir, o), .. more];
        var (code, _, err) = Run(Args("plain"));
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains("hold different BatchNorm running statistics", err);
        (code, _, err) = Run(Args("recomputed", "--recompute-bn"));
        Assert.True(code == 0, err);
    }
}
