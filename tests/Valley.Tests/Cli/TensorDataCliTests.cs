using System.Text.Json;
using Valley.Cli;
using Xunit;

namespace Valley.Tests.Cli;

/// <summary>The commands on tensor files: the same numbers as on the CSV equivalent, and bad files as one-line errors.</summary>
public class TensorDataCliTests
{
    public TensorDataCliTests() => TestUtil.Init();

    static string F(params string[] name) => Valley.Tests.Data.NumPyFileTests.Fixture(name);

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

    [Theory]
    [InlineData("cls.npz")]
    [InlineData("cls_f16.npz")]
    [InlineData("cls.pt")]
    [InlineData("cls.safetensors")]
    public void HessianAndEvalOnATensorFileGiveTheNumbersOfTheCsv(string file)
    {
        string[] common = ["--model", "mlp:3-6-3:tanh", "--subset", "0", "--dtype", "float64", "--seed", "4"];
        double Lambda(string data) =>
            Json(["hessian", "--data", data, .. common, "--top", "1", "--tol", "1e-10", "--out", Path.Combine(TestUtil.TempDir("h"), "o")])
                .GetProperty("report").GetProperty("lambda_max").GetDouble();
        var csvEval = Json(["eval", "--data", F("cls.csv"), .. common]);
        var fileEval = Json(["eval", "--data", F(file), .. common]);
        Assert.Equal(csvEval.GetProperty("train_loss").GetDouble(), fileEval.GetProperty("train_loss").GetDouble());
        Assert.Equal(csvEval.GetProperty("train_accuracy").GetDouble(), fileEval.GetProperty("train_accuracy").GetDouble());
        Assert.Equal(csvEval.GetProperty("gradient_norm").GetDouble(), fileEval.GetProperty("gradient_norm").GetDouble());
        Assert.Equal(Lambda(F("cls.csv")), Lambda(F(file)), 12);
    }

    [Fact]
    public void NpyPairAndFolderWithTestSplitEvaluateAsTheCsvFolder()
    {
        string[] common = ["--model", "mlp:3-6-3", "--subset", "0", "--normalize", "standardize"];
        var csv = Json(["eval", "--data", F("cls_split"), .. common]);
        var folder = Json(["eval", "--data", F("cls_folder"), .. common]);
        Assert.Equal(csv.GetProperty("train_loss").GetDouble(), folder.GetProperty("train_loss").GetDouble());
        Assert.Equal(csv.GetProperty("test_loss").GetDouble(), folder.GetProperty("test_loss").GetDouble());
        var pair = Json(["eval", "--data", F("cls_x.npy"), "--labels", F("cls_y.npy"), .. common]);
        var csvAll = Json(["eval", "--data", F("cls.csv"), .. common]);
        Assert.Equal(csvAll.GetProperty("train_loss").GetDouble(), pair.GetProperty("train_loss").GetDouble());
    }

    [Fact]
    public void LossOptionChoosesTheLossAndBceReportsLabelAccuracy()
    {
        var bce = Json("eval", "--data", F("multilabel.npz"), "--model", "mlp:3-8-2", "--loss", "bce", "--subset", "0");
        Assert.InRange(bce.GetProperty("train_accuracy").GetDouble(), 0, 1);
        var mse = Json("eval", "--data", F("multilabel.npz"), "--model", "mlp:3-8-2", "--subset", "0");
        Assert.NotEqual(bce.GetProperty("train_loss").GetDouble(), mse.GetProperty("train_loss").GetDouble());
        // No accuracy for mean squared error (omitted from the JSON as null).
        Assert.False(mse.TryGetProperty("train_accuracy", out var acc) && acc.ValueKind != JsonValueKind.Null);
    }

    [Theory]
    [InlineData("bad_object.npz", null, "object array")]
    [InlineData("bad_count.npz", null, "bad_count.npz: 'y' has shape [11] but 'x' holds 12 examples")]
    [InlineData("bad_nan.npz", null, "holds NaN or infinite values")]
    [InlineData("bad_negative_label.npz", null, "not a class index")]
    [InlineData("bad_missing_keys.npz", null, "the file holds 'inputs' [12×3] float32, 'targets' [12] int64")]
    [InlineData("bad_huge_shape.npy", "cls_y.npy", "truncated")]
    [InlineData("bad_truncated.npy", "cls_y.npy", "truncated")]
    [InlineData("bad_evil.pt", null, "which Valley never runs")]
    [InlineData("bad_list.pt", null, "not a tensor")]
    [InlineData("cls.npz", null, "binary cross-entropy needs floating-point targets", "--loss", "bce")]
    [InlineData("reg.npz", null, "cross-entropy needs integer class labels", "--loss", "cross-entropy", "--model", "mlp:3-4-1")]
    [InlineData("multilabel.npz", null, "'y' has shape [8×2]; class labels need shape [N]", "--task", "classification")]
    [InlineData("cls.npz", null, "'ordinal' not recognized", "--task", "ordinal")]
    [InlineData("cls.npz", null, "'hinge' not recognized", "--loss", "hinge")]
    [InlineData("cls.npz", null, "out of range for 2 classes", "--classes", "2")]
    [InlineData("cls.csv", "cls_y.npy", "goes with a tensor file of inputs")]
    public void BadTensorDataGivesOneLineErrorAndExitCode1(string file, string? labels, string expected, params string[] extra)
    {
        string[] args = ["eval", "--data", F(file), "--subset", "0", .. extra];
        if (!extra.Contains("--model")) args = [.. args, "--model", "mlp:3-4-3"];
        if (labels is not null) args = [.. args, "--labels", F(labels)];
        var (code, _, err) = Run(args);
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains(expected, err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public void LabelsTaskAndLossAreRunInputs()
    {
        var outDir = Path.Combine(TestUtil.TempDir("h-inputs"), "o");
        string[] common = ["hessian", "--data", F("reg.npz"), "--model", "mlp:3-4-1", "--subset", "0", "--top", "1", "--out", outDir];
        Assert.Equal(0, Run(common).Code);
        var inputs = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement.GetProperty("inputs").GetProperty("items");
        Assert.Equal("null", inputs.GetProperty("--loss").GetString());
        Assert.Equal("null", inputs.GetProperty("--task").GetString());
        Assert.False(inputs.TryGetProperty("--labels", out _));
        // Another loss is a run of other inputs: its results are computed anew, recorded with their loss.
        Assert.Equal(0, Run([.. common, "--loss", "mse"]).Code);
        inputs = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement.GetProperty("inputs").GetProperty("items");
        Assert.Equal("mse", inputs.GetProperty("--loss").GetString());
    }
}
