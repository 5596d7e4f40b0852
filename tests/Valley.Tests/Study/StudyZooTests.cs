using System.Globalization;
using System.Text.Json;
using Valley.Cli;
using Valley.Curvature;
using Valley.Data;
using Valley.Models;
using Valley.Study;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Study;

/// <summary>
/// valley study --models DIR: models trained elsewhere (weights written by Valley and a PyTorch state_dict) are evaluated and
/// measured exactly as the per-model commands evaluate and measure them, and bad rows of models.csv are one line.
/// </summary>
public class StudyZooTests
{
    public StudyZooTests() => TestUtil.Init();

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        return (code, o.ToString(), e.ToString());
    }

    static JsonElement Json(params string[] args)
    {
        var (code, stdout, err) = Run([.. args, "--format", "json"]);
        Assert.True(code == 0, err);
        return JsonDocument.Parse(stdout).RootElement;
    }

    static string PyTorchFixture => Path.Combine(AppContext.BaseDirectory, "Fixtures", "mlp_4_5_3.pt");

    /// <summary>Data (120 training, 60 test examples of 4 features, 3 classes) and a zoo of three mlp:4-5-3 models.</summary>
    static (string Data, string Zoo) MakeZoo(string name)
    {
        var data = TestUtil.CsvFolder($"{name}-data", 120, 4, 3, seed: 1);
        File.Copy(Path.Combine(TestUtil.CsvFolder($"{name}-test", 60, 4, 3, seed: 2), "train.csv"), Path.Combine(data, "test.csv"));
        var zoo = TestUtil.TempDir($"{name}-zoo");
        using (var init = new ModelSource("mlp:4-5-3", null, 3).Build([4], 3))
        {
            Weights.Save(init, Path.Combine(zoo, "a_init.dat"));
            // Moved away from its initialization, so that the distance to it is not 0.
            using (no_grad()) foreach (var p in init.parameters()) p.mul_(1.5).add_(0.1);
            Weights.Save(init, Path.Combine(zoo, "a.safetensors"));
        }
        using (var c = new ModelSource("mlp:4-5-3", null, 5).Build([4], 3)) Weights.Save(c, Path.Combine(zoo, "c.dat"));
        File.Copy(PyTorchFixture, Path.Combine(zoo, "b.pt"));
        File.WriteAllLines(Path.Combine(zoo, "models.csv"),
        [
            "name,weights,init,steps,seed,group",
            "valley-a,a.safetensors,a_init.dat,100,3,x",
            "torch-b,b.pt,,,,y",
            "valley-c,c.dat,,7,5,\"x, again\"",
        ]);
        return (data, zoo);
    }

    [Fact]
    public void AZooIsEvaluatedAndMeasuredAsTheEvalHessianAndSharpnessCommandsDo()
    {
        var (data, zoo) = MakeZoo("zoo");
        var outDir = Path.Combine(TestUtil.TempDir("zoo-out"), "study");
        // A spec of settings only (no grid: the zoo gives the models), with a quick measure set.
        var spec = Path.Combine(zoo, "measures.json");
        File.WriteAllText(spec, """
            { "data": { "train_examples": 0, "test_examples": 0 }, "model": "mlp:4-5-3",
              "measures": { "names": ["lambda_max", "top5_sum", "trace", "negative_mass", "keskar", "sam", "pacbayes", "fisher-trace", "relative-flatness"],
                            "max_products": 60, "density_runs": 2, "density_steps": 20, "epsilons": [0.001], "steps": 5, "samples": 3 },
              "figures": { "slice_points": 3, "contour_points": 3, "parametric_points": 3 } }
            """);
        var summary = Json("study", "--models", zoo, "--spec", spec, "--data", data, "--out", outDir);
        var models = summary.GetProperty("models").EnumerateArray().ToList();
        Assert.Equal(["valley-a", "torch-b", "valley-c"], models.Select(m => m.GetProperty("name").GetString()));
        // Nothing was trained; the further columns are the hyperparameters, steps come from their column.
        Assert.All(models, m => Assert.Equal(0, m.GetProperty("epochs").GetInt32()));
        Assert.False(File.Exists(Path.Combine(outDir, "models", "valley-a", "train.json")));
        Assert.Equal(100, models[0].GetProperty("steps").GetInt64());
        Assert.False(models[1].TryGetProperty("steps", out _));
        static string Hyper(JsonElement m) => string.Join(";", m.GetProperty("hyperparameters").EnumerateObject().Select(p => $"{p.Name}={p.Value.GetString()}"));
        Assert.Equal("seed=3;group=x", Hyper(models[0]));
        Assert.Equal("group=y", Hyper(models[1]));
        Assert.Equal("x, again", models[2].GetProperty("hyperparameters").GetProperty("group").GetString());
        // Figures that need an Adam small/large-batch pair are left out with a note; the report is written.
        Assert.Contains(summary.GetProperty("notes").EnumerateArray(), n => n.GetString()!.StartsWith("No parametric plot", StringComparison.Ordinal));
        Assert.True(File.Exists(Path.Combine(outDir, "report.html")));
        Assert.False(File.Exists(Path.Combine(outDir, "parametric.png")));

        using var split = DataSources.Open(data);
        var files = new[] { Path.Combine(zoo, "a.safetensors"), Path.Combine(zoo, "b.pt"), Path.Combine(zoo, "c.dat") };
        var seeds = new[] { 3, 0, 5 };
        for (int i = 0; i < 3; i++)
        {
            var m = models[i];
            // Train and test loss and accuracy, computed directly.
            using (var model = new ModelSource("mlp:4-5-3", files[i]).Build(split.Train))
            using (var obj = new Objective(model, Losses.CrossEntropy, split.Train))
            {
                var train = obj.Evaluate();
                var test = obj.Evaluate(split.Test!);
                Assert.Equal(train.Accuracy!.Value, m.GetProperty("train_accuracy").GetDouble(), 12);
                Assert.Equal(test.Accuracy!.Value, m.GetProperty("test_accuracy").GetDouble(), 12);
                Assert.Equal(train.Loss, m.GetProperty("train_loss").GetDouble(), 6);
                Assert.Equal(test.Loss, m.GetProperty("test_loss").GetDouble(), 6);
            }
            var measures = m.GetProperty("measures");
            string seed = seeds[i].ToString(CultureInfo.InvariantCulture);
            string[] common = ["--model", "mlp:4-5-3", "--weights", files[i], "--data", data, "--subset", "0", "--seed", seed, "--batch-size", "120"];
            // The curvature measures are valley hessian's with the quick preset's budgets and the model's seed.
            var h = Json(["hessian", .. common, "--top", "5", "--trace", "--density", "--max-products", "60", "--trace-error", "0.05",
                          "--density-runs", "2", "--density-steps", "20", "--out", Path.Combine(TestUtil.TempDir("zoo-h"), "h")]).GetProperty("report");
            Close(h.GetProperty("top").GetProperty("values")[0].GetDouble(), measures.GetProperty("lambda_max").GetDouble(), "lambda_max");
            Close(h.GetProperty("top").GetProperty("values").EnumerateArray().Sum(v => v.GetDouble()), measures.GetProperty("top5_sum").GetDouble(), "top5_sum");
            Close(h.GetProperty("trace").GetProperty("trace").GetDouble(), measures.GetProperty("trace").GetDouble(), "trace");
            Close(h.GetProperty("density").GetProperty("negative_mass").GetDouble(), measures.GetProperty("negative_mass").GetDouble(), "negative_mass");
            // The sharpness measures are valley sharpness's with the same seed.
            var s = Json(["sharpness", .. common, "--measures", "keskar,sam,pacbayes,fisher-trace,relative-flatness", "--epsilon", "1e-3", "--steps", "5", "--samples", "3",
                          "--out", Path.Combine(TestUtil.TempDir("zoo-s"), "s")]);
            var cli = s.GetProperty("results").EnumerateArray().ToDictionary(r =>
            {
                var name = r.GetProperty("measure").GetString()!;
                return name == "keskar" ? "keskar_eps" + r.GetProperty("parameters").GetProperty("epsilon").GetDouble().ToString("0e0", CultureInfo.InvariantCulture) : name.Replace('-', '_');
            }, r => r.GetProperty("value").GetDouble());
            int compared = 0;
            // valley sharpness always has a w₀ (the seeded initialization); the study only where models.csv gives one, and the
            // magnitude-aware "orig" bound measures its denominator from w₀ when there is one (w − w₀, else w).
            bool sameInit = i == 0;
            foreach (var p in measures.EnumerateObject().Where(p => !StudyOptions.CurvatureMeasures.Contains(p.Name) && (sameInit || p.Name != "pacbayes_mag_orig")))
            {
                Assert.True(cli.ContainsKey(p.Name), $"valley sharpness has no {p.Name}");
                Close(cli[p.Name], p.Value.GetDouble(), $"{m.GetProperty("name").GetString()} {p.Name}");
                compared++;
            }
            Assert.True(compared >= (sameInit ? 9 : 6), $"{compared} sharpness measures compared");
            // The PAC-Bayes bounds from the initialization are there only where models.csv gives it (valley sharpness uses the seeded one).
            Assert.Equal(i == 0, measures.EnumerateObject().Any(p => p.Name.Contains("init", StringComparison.Ordinal)));
        }
    }

    static void Close(double expected, double actual, string what) =>
        Assert.True(Math.Abs(expected - actual) <= 1e-6 * Math.Max(1, Math.Abs(expected)), $"{what}: per-model command {expected:R}, study {actual:R}");

    [Theory]
    [InlineData("name,weights\nok,a.safetensors\nbad,nope.pt", "row 2 (line 3), column weights: file not found: nope.pt")]
    [InlineData("name,weights,steps\nok,a.safetensors,1\nbad,c.dat,ten", "row 2 (line 3), column steps: must be a non-negative integer, got 'ten'")]
    [InlineData("name,weights\nok,a.safetensors\nbad,models.csv", "row 2 (line 3), column weights: models.csv: not a weights file (.pt, .pth, .bin, .safetensors, .dat) nor a TorchScript archive")]
    [InlineData("name,weights\nok,a.safetensors\nok,c.dat", "row 2 (line 3), column name: 'ok' again (also row 1)")]
    [InlineData("name,weights\nok,a.safetensors\nb/c,c.dat", "row 2 (line 3), column name: must be letters, digits, '.', '_' or '-' (it names a folder), got 'b/c'")]
    [InlineData("model,weights\nmlp:4-5-3,a.safetensors", "no 'name' column (columns: model, weights; needed: name, weights)")]
    [InlineData("name,weights,seed\nok,a.safetensors,1\nbad,c.dat,one", "row 2 (line 3), column seed: must be an integer (it also seeds the model's measures), got 'one'")]
    [InlineData("name,weights\nok,a.safetensors\nbad,c.dat,extra", "row 2 (line 3) has 3 fields, the header 2")]
    [InlineData("name,weights,model\nok,a.safetensors,\nbad,c.dat,mlp:4-x-3", "row 2 (line 3), column model: 'mlp:4-x-3': width 'x' is not a positive integer")]
    [InlineData("name,weights\nok,a.safetensors", "1 model; a study needs at least two")]
    public void ABadRowOfModelsCsvIsOneLineNamingTheRowAndColumn(string csv, string expected)
    {
        var (data, zoo) = MakeZoo("zoo-bad-" + Math.Abs(csv.GetHashCode()));
        File.WriteAllText(Path.Combine(zoo, "models.csv"), csv + "\n");
        using var split = DataSources.Open(data);
        var e = Assert.ThrowsAny<ValleyException>(() => StudyZoo.Read(zoo, "mlp:4-5-3", split.Train));
        Assert.Equal($"{Path.Combine(zoo, "models.csv")}: {expected}", e.Message);
    }

    [Fact]
    public void WeightsThatDoNotFitTheArchitectureAreRefusedNamingTheRowBeforeAnythingIsWritten()
    {
        var (data, zoo) = MakeZoo("zoo-shape");
        var outDir = Path.Combine(TestUtil.TempDir("zoo-shape-out"), "study");
        var (code, _, err) = Run("study", "--models", zoo, "--preset", "quick", "--model", "mlp:4-6-3", "--data", data, "--out", outDir);
        // (the quick preset's settings with the zoo's models: --model is the architecture of rows without a model column)
        Assert.NotEqual(0, code);
        Assert.Contains($"{Path.Combine(zoo, "models.csv")}: row 1 (line 2), column weights: ", err);
        Assert.Contains("does not match the model", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.False(File.Exists(Path.Combine(outDir, "study.json")));
    }
}
