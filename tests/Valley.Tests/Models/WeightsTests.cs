using System.Text.Json;
using TorchSharp;
using Valley.Models;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Models;

public class WeightsTests
{
    public WeightsTests() => TestUtil.Init();

    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", name);

    static byte[] StateBytes(nn.Module m) =>
        m.state_dict().OrderBy(kv => kv.Key).SelectMany(kv => kv.Value.cpu().contiguous().bytes.ToArray()).ToArray();

    [Theory]
    [InlineData("w.dat")]
    [InlineData("w.pt")]
    [InlineData("w.safetensors")]
    public void SavedWeightsLoadBackBitIdentical(string file)
    {
        var dir = TestUtil.TempDir("weights");
        var spec = ModelSpec.Parse("resnet:4");
        var a = spec.Build([1, 28, 28], 10, seed: 1);
        // Give BatchNorm buffers non-default values so that they are checked too.
        a.train(); using (no_grad()) a.call(rand([8, 1, 28, 28], generator: new Generator(5)));
        var b = spec.Build([1, 28, 28], 10, seed: 2);
        Assert.NotEqual(StateBytes(a), StateBytes(b));
        Weights.Save(a, Path.Combine(dir, file));
        Weights.Load(b, Path.Combine(dir, file));
        Assert.Equal(StateBytes(a), StateBytes(b));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
    }

    [Fact]
    public void PyTorchStateDictLoadsWithIdenticalValuesAndOutputs()
    {
        var reference = JsonDocument.Parse(File.ReadAllText(Fixture("mlp_4_5_3.json"))).RootElement;
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 99);
        Weights.Load(model, Fixture("mlp_4_5_3.pt"));
        foreach (var (name, t) in model.state_dict())
        {
            var expected = reference.GetProperty("state").GetProperty(name).EnumerateArray().Select(e => e.GetSingle()).ToArray();
            Assert.Equal(expected, t.reshape(-1).data<float>().ToArray());
        }
        var x = tensor(reference.GetProperty("input").EnumerateArray().Select(e => e.GetSingle()).ToArray(), [2, 4]);
        var y = model.call(x).reshape(-1).data<float>().ToArray();
        var yExpected = reference.GetProperty("output").EnumerateArray().Select(e => e.GetSingle()).ToArray();
        for (int i = 0; i < y.Length; i++) Assert.Equal(yExpected[i], y[i], 6);
    }

    [Fact]
    public void MismatchedArchitectureListsEveryMismatchAndChangesNothing()
    {
        var model = ModelSpec.Parse("mlp:4-7-3").Build([4], 3, seed: 1);
        var before = StateBytes(model);
        var e = Assert.Throws<WeightsException>(() => Weights.Load(model, Fixture("mlp_4_5_3.pt")));
        Assert.Contains("mlp_4_5_3.pt", e.Message);
        Assert.Contains("'0.weight' has shape [5×4], the model needs [7×4]", e.Message);
        Assert.Contains("'2.weight' has shape [3×5], the model needs [3×7]", e.Message);
        Assert.Equal(before, StateBytes(model));
    }

    [Fact]
    public void MissingAndUnexpectedNamesAreListed()
    {
        var dir = TestUtil.TempDir("weights");
        var small = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        Weights.Save(small, Path.Combine(dir, "s.safetensors"));
        var deeper = ModelSpec.Parse("mlp:4-5-5-3").Build([4], 3, seed: 1);
        var e = Assert.Throws<WeightsException>(() => Weights.Load(deeper, Path.Combine(dir, "s.safetensors")));
        Assert.Contains("missing '4.weight'", e.Message);
    }

    [Fact]
    public void PickleThatWouldRunCodeIsRefusedAndNothingRuns()
    {
        File.Delete("/tmp/valley-evil-pickle-ran");
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        var e = Assert.Throws<WeightsException>(() => Weights.Load(model, Fixture("evil.pt")));
        Assert.Contains("evil.pt", e.Message);
        Assert.Contains("not a PyTorch state_dict", e.Message);
        Assert.False(File.Exists("/tmp/valley-evil-pickle-ran"));
    }

    [Theory]
    [InlineData("w.dat")]
    [InlineData("w.pt")]
    [InlineData("w.safetensors")]
    public void TruncatedOrEmptyFilesGiveCleanErrors(string file)
    {
        var dir = TestUtil.TempDir("weights");
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        var path = Path.Combine(dir, file);
        Weights.Save(model, path);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        Assert.Throws<WeightsException>(() => Weights.Load(model, path));
        File.WriteAllBytes(path, []);
        Assert.Contains("empty file", Assert.Throws<WeightsException>(() => Weights.Load(model, path)).Message);
    }

    [Fact]
    public void NonFiniteWeightsAreRefused()
    {
        var dir = TestUtil.TempDir("weights");
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        using (no_grad()) model.parameters().First()[0, 0] = float.NaN;
        Weights.Save(model, Path.Combine(dir, "nan.dat"));
        var fresh = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        Assert.Contains("NaN", Assert.Throws<WeightsException>(() => Weights.Load(fresh, Path.Combine(dir, "nan.dat"))).Message);
    }

    [Fact]
    public void UnknownExtensionIsRefused() =>
        Assert.Contains("unknown weights format", Assert.Throws<WeightsException>(() => Weights.FormatOf("model.onnx")).Message);
}
