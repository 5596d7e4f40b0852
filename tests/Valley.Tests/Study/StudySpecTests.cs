using System.Text.Json;
using Valley.Cli;
using Valley.Study;
using Xunit;

namespace Valley.Tests.Study;

/// <summary>Study specification files: presets round-trip, bad specs are one line naming the field, a changed spec is refused.</summary>
public class StudySpecTests
{
    public StudySpecTests() => TestUtil.Init();

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        return (code, o.ToString(), e.ToString());
    }

    static string OptionsJson(StudyOptions o) => JsonSerializer.Serialize(o);

    [Theory]
    [InlineData("quick")]
    [InlineData("default")]
    [InlineData("full")]
    public void EveryPresetRoundTripsThroughPrintAndParse(string preset)
    {
        var (code, printed, err) = Run("study", "--print-spec", preset);
        Assert.True(code == 0, err);
        var shipped = StudySpec.Preset(preset);
        var parsed = StudySpec.Parse(printed, "printed");
        // The same normalized spec, the same study (every model with its settings, names and hyperparameters), twice over.
        Assert.Equal(shipped.ToJson(), printed);
        Assert.Equal(printed, parsed.ToJson());
        Assert.Equal(OptionsJson(shipped.ToOptions()), OptionsJson(parsed.ToOptions()));
        Assert.Equal(OptionsJson(StudyOptions.For(preset)), OptionsJson(parsed.ToOptions()));
        var models = parsed.ToOptions().Models;
        Assert.Equal(models.Count, models.Select(m => m.Name).Distinct().Count());
        // Every model carries every hyperparameter that varies across the grid (lr and ρ where they vary for one optimizer).
        string Value(StudyModel m, string k) => m.Settings().GetValueOrDefault(k) ?? (k == "architecture" ? parsed.Model : "");
        var varied = new[] { "architecture", "optimizer", "lr", "batch_size", "weight_decay", "rho", "seed", "train_size" }
            .Where(k => k is "lr" or "rho" ? models.GroupBy(m => m.Optimizer).Any(g => g.Select(m => Value(m, k)).Distinct().Count() > 1)
                                            : models.Select(m => Value(m, k)).Distinct().Count() > 1).ToList();
        Assert.All(models, m => Assert.All(m.Hyperparameters.Keys, k => Assert.True(varied.Contains(k) || k is "optimizer" or "batch_size" or "seed", $"{m.Name}: {k} does not vary")));
        Assert.All(models, m => Assert.All(varied, k => Assert.True(m.Hyperparameters.ContainsKey(k), $"{m.Name} lacks {k}")));
        switch (preset)
        {
            case "quick":
                Assert.Equal(["adam-b64-s0", "adam-b200-s0", "sam-b64-s0"], models.Select(m => m.Name));
                break;
            case "default":
                Assert.True(models.Count >= 24, $"{models.Count} models");
                Assert.Contains("seed", varied);
                Assert.True(varied.Count(k => k is not "seed") >= 3, string.Join(",", varied));
                Assert.Equal(["optimizer", "batch_size", "weight_decay", "seed"], models[0].Hyperparameters.Keys);
                Assert.Equal(2000, parsed.Data.TrainExamples);
                break;
            case "full":
                Assert.True(models.Count >= 60, $"{models.Count} models");
                Assert.Equal(0, parsed.Data.TrainExamples);
                Assert.True(models.Select(m => m.Architecture).Distinct().Count() >= 3);
                Assert.Contains("architecture", varied);
                break;
        }
    }

    [Fact]
    public void AGridExpandsToItsProductWithRhoForSamOnlyAndNamesFromWhatVaries()
    {
        var spec = StudySpec.Parse("""
            { "data": { "train_examples": 100 },
              "grid": { "optimizer": ["sgd", "sam"], "learning_rate": 0.1, "batch_size": [8, 16], "rho": [0.02, 0.05], "seed": [0, 1] },
              "models": [ { "name": "extra", "optimizer": "adam", "learning_rate": 0.001, "batch_size": 8, "train_size": 50 } ] }
            """, "s.json");
        var models = spec.Expand();
        // sgd: 2 batch sizes × 2 seeds (ρ is SAM's); sam: 2 × 2 ρ × 2 seeds; plus the listed one.
        Assert.Equal(4 + 8 + 1, models.Count);
        Assert.Equal(["n100-sgd-b8-s0", "n100-sgd-b8-s1", "n100-sgd-b16-s0", "n100-sgd-b16-s1"], models.Take(4).Select(m => m.Name));
        Assert.Equal("n100-sam-b8-rho0.02-s0", models[4].Name);
        Assert.Equal("extra", models[^1].Name);
        Assert.Equal(50, models[^1].TrainExamples);
        // The learning rate comes with the optimizer here (not a hyperparameter of its own); SAM's ρ varies, 0 without SAM.
        Assert.Equal(new Dictionary<string, string> { ["train_size"] = "100", ["optimizer"] = "sgd", ["batch_size"] = "8", ["rho"] = "0", ["seed"] = "0" },
            models[0].Hyperparameters);
        Assert.Equal("0.02", models[4].Hyperparameters["rho"]);
        Assert.Equal("50", models[^1].Hyperparameters["train_size"]);
        Assert.Equal(0.02, models[4].Rho);
        Assert.Null(models[0].Rho);
    }

    const string Ok = """ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": [8, 16] } """;

    [Theory]
    [InlineData("""{ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": [8, 16, -3] } }""", "grid.batch_size[2]: must be a positive integer, got -3")]
    [InlineData("""{ "grd": {} }""", "grd: unknown field (known: name, data, model, architectures, grid, models, stopping, measures, figures, seed)")]
    [InlineData("""{ "measures": { "nmes": [] }, """ + Ok + "}", "measures.nmes: unknown field (known: names, examples, max_products, trace_error, density_runs, density_steps, epsilons, rho, steps, samples)")]
    [InlineData("""{ "stopping": { "loss": "low" }, """ + Ok + "}", "stopping.loss: must be a positive number, got \"low\"")]
    [InlineData("""{ "grid": { "optimizer": [], "learning_rate": 0.1, "batch_size": 8 } }""", "grid.optimizer: is empty (give at least one value)")]
    [InlineData("""{ "grid": [] }""", "grid: is empty (give at least one product of value lists, or list models under \"models\")")]
    [InlineData("""{ "models": {} }""", "models: must be a list of models, got an object")]
    [InlineData("""{ "models": [ { "name": "a", "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8 }, { "name": "a", "optimizer": "adam", "learning_rate": 0.1, "batch_size": 8 } ] }""",
        "models[1].name: duplicate model name 'a' (also from models[0]); give the models different settings or names")]
    [InlineData("""{ "grid": [ { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": [8, 16] }, { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8 } ] }""",
        "grid[1]: duplicate model name 'sgd-b8-s0' (also from grid[0]); give the models different settings or names")]
    [InlineData("""{ "measures": { "names": ["lambda_max", "lambda_min"] }, """ + Ok + "}", "measures.names[1]: unknown measure \"lambda_min\" (known: lambda_max, top5_sum, trace, negative_mass, keskar, keskar-subspace, sam, worst-case-l2, worst-case-l2-adaptive, worst-case-linf, worst-case-linf-adaptive, average-case, average-case-adaptive, pacbayes, worst-case-flatness, relative-flatness, fisher-trace, fisher-rao)")]
    [InlineData("""{ "grid": { "optimizer": ["sgd", "rmsprop"], "learning_rate": 0.1, "batch_size": 8 } }""", "grid.optimizer[1]: unknown value \"rmsprop\" (known: sgd, adam, sam, asam)")]
    [InlineData("""{ "grid": { "optimizer": "sgd", "batch_size": 8 } }""", "grid.learning_rate: missing (required)")]
    [InlineData("""{ "model": "mlp:784-x-10", """ + Ok + "}", "model: 'mlp:784-x-10': width 'x' is not a positive integer")]
    [InlineData("""{ "data": { "train_examples": 100 }, "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8, "train_size": [50, 200] } }""", "grid.train_size[1]: 200 is more than data.train_examples (100)")]
    [InlineData("""{ "data": { "task": "clustering" }, """ + Ok + "}", "data.task: unknown value \"clustering\" (known: classification, regression)")]
    [InlineData("""{ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8 } }""", "grid: gives 1 model; a study needs at least two")]
    [InlineData("""{ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8, "seed": [0, 0] } }""", "grid.seed[1]: repeats grid.seed[0] (0)")]
    [InlineData("""{ "figures": { "slice_points": 1 }, """ + Ok + "}", "figures.slice_points: must be an integer of at least 2, got 1")]
    [InlineData("""{ "measures": { "trace_error": 1.5 }, """ + Ok + "}", "measures.trace_error: must be in (0, 1), got 1.5")]
    [InlineData("""{ "models": [ { "name": "../x", "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8 } ] }""", "models[0].name: must use letters, digits, '.', '_' and '-' only (it names a folder), got \"../x\"")]
    [InlineData("""{ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": 8.5 } }""", "grid.batch_size: must be a positive integer, got 8.5")]
    [InlineData("""{ "stopping": [], """ + Ok + "}", "stopping: must be an object, got a list")]
    [InlineData("""{ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": [8, 16] }, }  x""", "not valid JSON (line 1, position 83)")]
    public void EveryBadSpecIsOneLineNamingTheField(string json, string expected)
    {
        var e = Assert.Throws<ValleyException>(() => StudySpec.Parse(json, "s.json"));
        Assert.Equal("s.json: " + expected, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void TheCommandRefusesABadSpecInOneLineBeforeWritingAnything()
    {
        var dir = TestUtil.TempDir("spec-bad");
        var file = Path.Combine(dir, "s.json");
        File.WriteAllText(file, """{ "grid": { "optimizer": "sgd", "learning_rate": 0.1, "batch_size": [8, 16, -3] } }""");
        var outDir = Path.Combine(dir, "out");
        var (code, _, err) = Run("study", "--spec", file, "--out", outDir);
        Assert.NotEqual(0, code);
        Assert.Contains($"--spec {file}: grid.batch_size[2]: must be a positive integer, got -3", err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.False(Directory.Exists(outDir));
        (code, _, err) = Run("study", "--spec", file, "--preset", "quick", "--out", outDir);
        Assert.NotEqual(0, code);
        Assert.Contains("--spec and --preset: give one", err);
        // A spec without models serves a model zoo only.
        File.WriteAllText(file, """{ "measures": { "names": ["lambda_max"] } }""");
        Assert.Empty(StudySpec.Load(file).Expand());
        (code, _, err) = Run("study", "--spec", file, "--out", outDir);
        Assert.NotEqual(0, code);
        Assert.Contains($"--spec {file}: grid: no models: give a grid (value lists) or a list of models, or measure a model zoo with --models DIR", err);
        Assert.False(Directory.Exists(outDir));
    }

    /// <summary>A two-model study of a few seconds on a small CSV: one epoch, λmax only, tiny figures.</summary>
    internal static string TinySpec(int maxEpochs = 1) => $$"""
        { "name": "tiny", "data": { "train_examples": 0, "test_examples": 0 }, "model": "mlp:4-8-3",
          "grid": { "optimizer": ["sgd", "adam"], "learning_rate": 0.01, "batch_size": 40 },
          "stopping": { "loss": 0.001, "max_epochs": {{maxEpochs}} },
          "measures": { "names": ["lambda_max", "sam"], "examples": 60, "max_products": 30 },
          "figures": { "slice_points": 3, "contour_points": 3, "parametric_points": 3 } }
        """;

    [Fact]
    public void AChangedSpecInAUsedOutIsRefusedAndTheSameSpecResumes()
    {
        var data = TestUtil.CsvFolder("spec-change", 120, 4, 3, seed: 1);
        File.Copy(Path.Combine(TestUtil.CsvFolder("spec-change-test", 60, 4, 3, seed: 2), "train.csv"), Path.Combine(data, "test.csv"));
        var dir = TestUtil.TempDir("spec-change-run");
        var spec = Path.Combine(dir, "s.json");
        File.WriteAllText(spec, TinySpec());
        var outDir = Path.Combine(dir, "out");
        string[] args = ["study", "--spec", spec, "--data", data, "--out", outDir, "--format", "json"];
        var (code, first, err) = Run(args);
        Assert.True(code == 0, err);
        Assert.Equal(["sgd-b40-s0", "adam-b40-s0"], JsonDocument.Parse(first).RootElement.GetProperty("models").EnumerateArray().Select(m => m.GetProperty("name").GetString()));
        // The normalized spec is kept beside the results.
        var expected = StudySpec.Parse(TinySpec(), "x");
        Assert.Equal((expected with { Data = expected.Data with { Path = data } }).ToJson(), File.ReadAllText(Path.Combine(outDir, "spec.json")));
        // The same spec again: continued (the models and their measures reused), the same numbers.
        (code, var again, err) = Run(args);
        Assert.True(code == 0, err);
        Assert.Equal(Lambda(first), Lambda(again));
        // Another stopping rule: refused, naming the changed section, and nothing is mixed in.
        File.WriteAllText(spec, TinySpec(maxEpochs: 2));
        (code, _, err) = Run(args);
        Assert.NotEqual(0, code);
        Assert.Contains($"--out {outDir}: holds a study of other inputs (spec.stopping contents); choose another --out or remove it", err);
        Assert.Single(err.Trim().Split('\n'));
        static double[] Lambda(string json) => JsonDocument.Parse(json).RootElement.GetProperty("models").EnumerateArray()
            .Select(m => m.GetProperty("measures").GetProperty("lambda_max").GetDouble()).ToArray();
    }
}
