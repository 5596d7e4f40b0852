using System.Text.Json.Nodes;
using Valley.Cli;
using Valley.Models;
using Xunit;

namespace Valley.Tests.Reliability;

/// <summary>
/// A rerun into a used output folder never reports a number computed from other inputs: change the data's contents (same
/// file name), the weights' contents (same file name), or one number-changing option at a time, and the result is the fresh
/// result (hessian, sharpness) or the rerun is refused (landscape, train --resume, study); identical inputs under other
/// names resume.
/// </summary>
public class RerunTests
{
    public RerunTests() => TestUtil.Init();

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        return (code, o.ToString(), e.ToString());
    }

    static JsonNode Ok(params string[] args)
    {
        var (code, stdout, err) = Run(args);
        Assert.True(code == 0, $"{string.Join(' ', args)}: exit {code}: {err}");
        return JsonNode.Parse(stdout)!;
    }

    /// <summary>Overwrites a data folder's train.csv in place with other values (same name, same size).</summary>
    static void ReplaceData(string folder, long seed)
    {
        var other = TestUtil.CsvFolder("rerun-other", 60, 5, 3, seed);
        File.Copy(Path.Combine(other, "train.csv"), Path.Combine(folder, "train.csv"), overwrite: true);
    }

    /// <summary>Overwrites a weights file in place with another initialization of the same architecture.</summary>
    static void WriteWeights(string path, long seed) => Weights.Save(ModelSpec.Parse("mlp:5-8-3").Build([5], 3, seed), path);

    /// <summary>The JSON without timings, for comparing a rerun with a fresh run.</summary>
    static string Strip(JsonNode? n)
    {
        static void Walk(JsonNode? x)
        {
            if (x is JsonObject o)
            {
                foreach (var k in o.Select(kv => kv.Key).Where(k => k is "seconds").ToList()) o.Remove(k);
                foreach (var kv in o.ToList()) Walk(kv.Value);
            }
            else if (x is JsonArray a) foreach (var y in a) Walk(y);
        }
        Walk(n);
        return n!.ToJsonString();
    }

    /// <summary>Options with values (and flags) where <paramref name="changes"/> replace the options of the same name in <paramref name="baseArgs"/>.</summary>
    static string[] Merge(string[] baseArgs, string[] changes)
    {
        static List<string[]> Pairs(string[] a)
        {
            var list = new List<string[]>();
            for (int i = 0; i < a.Length; i++)
                list.Add(i + 1 < a.Length && !a[i + 1].StartsWith("--", StringComparison.Ordinal) ? [a[i], a[++i]] : [a[i]]);
            return list;
        }
        var changed = Pairs(changes);
        return Pairs(baseArgs).Where(p => changed.All(c => c[0] != p[0])).Concat(changed).SelectMany(p => p).ToArray();
    }

    /// <summary>Every change of an input (applied before the rerun), paired with a description for the failure message.</summary>
    static IEnumerable<(string What, Action<string, string> Change, string[] Options)> Changes(string[] extra) =>
    [
        ("data contents", (data, _) => ReplaceData(data, 99), []),
        ("weights contents", (_, weights) => WriteWeights(weights, 7), []),
        .. extra.Chunk(2).Select(p => ($"{p[0]} {p[1]}", new Action<string, string>((_, _) => { }), p[1].Length == 0 ? new[] { p[0] } : p)),
    ];

    [Theory]
    // Double backward, whose rounding depends on the batch size (the R-passes over chunks give the same bits for any batch
    // size, so a changed --batch-size would show nothing); switching the method changes the rounding too.
    [InlineData("hessian", new[] { "--top", "1", "--trace", "--max-products", "60", "--hessian-products", "double-backward" }, "report",
        new[] { "--seed", "1", "--normalize", "standardize", "--train-mode", "", "--dtype", "float64", "--batch-size", "7", "--layer", "0", "--subset", "40", "--tol", "1e-6",
                "--hessian-products", "auto" })]
    [InlineData("sharpness", new[] { "--measures", "keskar,sam", "--epsilon", "1e-3", "--steps", "4" }, "results",
        new[] { "--seed", "1", "--normalize", "standardize", "--epsilon", "5e-4", "--rho", "0.1", "--steps", "3", "--batch-size", "7" })]
    public void ARerunWithOtherInputsReportsTheFreshResult(string command, string[] options, string resultKey, string[] variations)
    {
        foreach (var (what, change, changed) in Changes(variations))
        {
            var data = TestUtil.CsvFolder("rerun-data", 60, 5, 3, seed: 1);
            var weights = Path.Combine(TestUtil.TempDir("rerun-w"), "w.dat");
            WriteWeights(weights, 3);
            var used = TestUtil.TempDir("rerun-used");
            string[] Args(string outDir, string[] more) =>
                [command, .. Merge(["--data", data, "--weights", weights, "--model", "mlp:5-8-3", "--subset", "0", .. options], more), "--format", "json", "--out", outDir];
            var first = Ok(Args(used, []));
            change(data, weights);
            var rerun = Ok(Args(used, changed));
            var fresh = Ok(Args(TestUtil.TempDir("rerun-fresh"), changed));
            Assert.True(Strip(fresh[resultKey]) == Strip(rerun[resultKey]), $"{command} after changing {what}: the rerun's result is not the fresh one");
            Assert.Equal(fresh["inputs"]!["fingerprint"]!.ToJsonString(), rerun["inputs"]!["fingerprint"]!.ToJsonString());
            // A model without BatchNorm or dropout computes the same in train mode: there the fresh start is all there is to see.
            if (!what.StartsWith("--train-mode", StringComparison.Ordinal))
                Assert.True(Strip(first[resultKey]) != Strip(rerun[resultKey]), $"{command}: changing {what} did not change the result (the test shows nothing)");
        }
    }

    [Fact]
    public void ARerunOfIdenticalInputsUnderOtherNamesResumes()
    {
        var data = TestUtil.CsvFolder("rerun-same", 60, 5, 3, seed: 1);
        var renamed = TestUtil.TempDir("rerun-renamed");
        File.Copy(Path.Combine(data, "train.csv"), Path.Combine(renamed, "train.csv"));
        var outDir = TestUtil.TempDir("rerun-resume");
        string[] Args(string d) => ["landscape", "1d", "--data", d, "--model", "mlp:5-8-3", "--subset", "0", "--points", "5", "--format", "json", "--out", outDir];
        Ok(Args(data));
        Assert.Equal(5, Ok(Args(renamed))["resumed"]!.GetValue<int>());
        string[] Hessian(string d) => ["hessian", "--data", d, "--model", "mlp:5-8-3", "--subset", "0", "--top", "1", "--format", "json", "--out", outDir + "-h"];
        var a = Ok(Hessian(data));
        var b = Ok(Hessian(renamed));
        // Resumed: the finished estimator is taken over as it was, timings included.
        Assert.Equal(a["report"]!["top"]!.ToJsonString(), b["report"]!["top"]!.ToJsonString());
    }

    [Theory]
    [InlineData(new[] { "--seed", "1" }, "--seed (0 → 1)")]
    [InlineData(new[] { "--normalization", "layer" }, "--normalization (Filter → Layer)")]
    [InlineData(new[] { "--points", "7" }, "--points (5x5 → 7x7)")]
    [InlineData(new[] { "--range", "-2:2" }, "--range (null → -2:2)")]
    [InlineData(new[] { "--normalize", "standardize" }, "data contents")]
    [InlineData(new[] { "--dtype", "float64" }, "data contents")]
    [InlineData(new[] { "data" }, "data contents")]
    [InlineData(new[] { "weights" }, "model state contents")]
    public void ALandscapeRerunOfOtherInputsIsRefused(string[] change, string expected)
    {
        var data = TestUtil.CsvFolder("rerun-land", 60, 5, 3, seed: 1);
        var weights = Path.Combine(TestUtil.TempDir("rerun-land-w"), "w.dat");
        WriteWeights(weights, 3);
        var outDir = TestUtil.TempDir("rerun-land-out");
        string[] Args(string[] more) => ["landscape", "1d", .. Merge(["--data", data, "--weights", weights, "--model", "mlp:5-8-3", "--subset", "0", "--points", "5"], more), "--out", outDir];
        Ok([.. Args([]), "--format", "json"]);
        var before = File.ReadAllText(Path.Combine(outDir, "points.csv"));
        if (change[0] == "data") ReplaceData(data, 99);
        if (change[0] == "weights") WriteWeights(weights, 7);
        var (code, _, err) = Run(Args(change.Length == 2 ? change : []));
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains("holds a landscape run of other inputs", err);
        Assert.Contains(expected, err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Equal(before, File.ReadAllText(Path.Combine(outDir, "points.csv")));
    }

    [Fact]
    public void ResumingTrainingOnOtherDataOrFromOtherInitialWeightsIsRefused()
    {
        var data = TestUtil.CsvFolder("rerun-train", 60, 5, 3, seed: 1);
        var weights = Path.Combine(TestUtil.TempDir("rerun-train-w"), "w.dat");
        WriteWeights(weights, 3);
        string[] Args(string outDir, int epochs) =>
            ["train", "--data", data, "--weights", weights, "--model", "mlp:5-8-3", "--epochs", epochs.ToString(), "--batch-size", "20", "--out", outDir, "--resume"];
        var a = TestUtil.TempDir("rerun-train-a");
        Ok([.. Args(a, 1), "--format", "json"]);
        WriteWeights(weights, 7);
        var (code, _, err) = Run(Args(a, 2));
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains("trained from other inputs (initial weights contents)", err);
        WriteWeights(weights, 3);
        ReplaceData(data, 99);
        (code, _, err) = Run(Args(a, 2));
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains("trained from other inputs (data contents)", err);
        // The same inputs again: the run continues.
        var b = TestUtil.TempDir("rerun-train-b");
        Ok([.. Args(b, 1), "--format", "json"]);
        Assert.Equal(2, Ok([.. Args(b, 2), "--format", "json"])["completed_epochs"]!.GetValue<int>());
    }

    [Fact]
    public void AStudyFolderIsContinuedOnlyWithTheSameDataContents()
    {
        var data = TestUtil.CsvFolder("rerun-study", 120, 4, 3, seed: 1);
        File.Copy(Path.Combine(TestUtil.CsvFolder("rerun-study-test", 60, 4, 3, seed: 2), "train.csv"), Path.Combine(data, "test.csv"));
        var outDir = TestUtil.TempDir("rerun-study-out");
        string[] args = ["study", "--preset", "quick", "--data", data, "--model", "mlp:4-8-3", "--out", outDir, "--format", "json"];
        Ok(args);
        File.Copy(Path.Combine(TestUtil.CsvFolder("rerun-study-test2", 60, 4, 3, seed: 3), "train.csv"), Path.Combine(data, "test.csv"), overwrite: true);
        var (code, _, err) = Run(args);
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains("holds a study of other inputs (test data contents)", err);
    }
}
