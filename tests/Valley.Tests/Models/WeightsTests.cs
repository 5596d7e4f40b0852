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
    public void PyTorchViewsOfOneSharedStorageLoadAsPyTorchLoadsThem()
    {
        // Offsets into one storage, a transposed view and a strided view (make_fixtures.py): PyBridge refused these.
        var reference = JsonDocument.Parse(File.ReadAllText(Fixture("mlp_4_5_3_views.json"))).RootElement;
        var read = Weights.ReadStateDict(Fixture("mlp_4_5_3_views.pt"));
        try
        {
            Assert.Equal(["0.weight", "0.bias", "2.weight", "2.bias"], read.Keys);
            foreach (var (name, t) in read)
            {
                Assert.True(t.is_contiguous() && t.storage_offset() == 0, name);
                var expected = reference.GetProperty("state").GetProperty(name).EnumerateArray().Select(e => e.GetSingle()).ToArray();
                Assert.Equal(expected, t.reshape(-1).data<float>().ToArray());
            }
        }
        finally { foreach (var t in read.Values) t.Dispose(); }

        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 99);
        Weights.Load(model, Fixture("mlp_4_5_3_views.pt"));
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
    public void EveryStorageTypeTorchSaveWritesLoadsWithItsValues()
    {
        var reference = JsonDocument.Parse(File.ReadAllText(Fixture("dtypes.json"))).RootElement;
        var read = Weights.ReadStateDict(Fixture("dtypes.pt"));
        try
        {
            Assert.Equal(reference.EnumerateObject().Select(p => p.Name), read.Keys);
            foreach (var p in reference.EnumerateObject())
            {
                var t = read[p.Name];
                string dtype = t.dtype switch
                {
                    ScalarType.Float64 => "float64", ScalarType.Float32 => "float32", ScalarType.Float16 => "float16", ScalarType.BFloat16 => "bfloat16",
                    ScalarType.Int64 => "int64", ScalarType.Int32 => "int32", ScalarType.Int16 => "int16", ScalarType.Int8 => "int8",
                    ScalarType.Byte => "uint8", ScalarType.Bool => "bool", ScalarType.ComplexFloat32 => "complex64", ScalarType.ComplexFloat64 => "complex128",
                    var other => other.ToString(),
                };
                Assert.Equal(p.Value.GetProperty("dtype").GetString(), dtype);
                Assert.Equal(p.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()), t.shape);
                using var values = (t.is_complex() ? view_as_real(t) : t).to(ScalarType.Float64).reshape(-1);
                Assert.Equal(p.Value.GetProperty("values").EnumerateArray().Select(e => e.GetDouble()), values.data<double>().ToArray());
            }
        }
        finally { foreach (var t in read.Values) t.Dispose(); }
        using var handwritten = Weights.ReadStateDict(Fixture("ok_handwritten.pt"))["0.weight"];
        Assert.Equal(Enumerable.Range(0, 20).Select(i => (float)i), handwritten.reshape(-1).data<float>().ToArray());
    }

    static WeightsException Refused(string file, params string[] parts)
    {
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        var before = StateBytes(model);
        var path = File.Exists(file) ? file : Fixture(file);
        var e = Assert.Throws<WeightsException>(() => Weights.Load(model, path));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains(Path.GetFileName(path), e.Message);
        foreach (var part in parts) Assert.Contains(part, e.Message);
        Assert.Equal(before, StateBytes(model));
        return e;
    }

    [Fact]
    public void ViewOutsideItsStorageIsRefusedBeforeAnyTensorIsBuilt() =>
        Refused("view_out_of_bounds.pt", "corrupt PyTorch state_dict", "tensor '0.weight' [5×4] at offset 2", "reaches element 21 of its storage '0', which holds 20 elements");

    [Fact]
    public void ViewsThatRepeatElementsBeyondTheMachinesMemoryAreRefused() =>
        Refused("expand_bomb.pt", "too large: its tensors need 4194304 MiB once copied out of their storages");

    [Theory]
    [InlineData("storage_short.pt", "short/data/0 is 40 bytes, but its 20 elements of torch.FloatStorage need 80")]
    [InlineData("storage_long.pt", "long/data/0 is 160 bytes, but its 20 elements of torch.FloatStorage need 80")]
    // Its zip headers say 80 bytes and .NET stops inflating there (never the 64 MiB), so the cut-short entry fails its CRC.
    [InlineData("zip_bomb.pt", "bomb/data/0 does not match its CRC-32")]
    public void StorageEntriesOfAnotherLengthThanDeclaredAreRefused(string file, string message) => Refused(file, message);

    [Fact]
    public void OverlappingSafetensorsRangesAreRefused()
    {
        // '0.bias' reuses the last 20 bytes of '0.weight'.
        var path = Path.Combine(TestUtil.TempDir("weights"), "overlap.safetensors");
        var header = System.Text.Encoding.UTF8.GetBytes("""
            {"0.weight":{"dtype":"F32","shape":[5,4],"data_offsets":[0,80]},"0.bias":{"dtype":"F32","shape":[5],"data_offsets":[60,80]},
             "2.weight":{"dtype":"F32","shape":[3,5],"data_offsets":[80,140]},"2.bias":{"dtype":"F32","shape":[3],"data_offsets":[140,152]}}
            """);
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)header.Length), .. header, .. new byte[152]]);
        Refused(path, "tensors '0.weight' (bytes 0–80) and '0.bias' (bytes 60–80) overlap");
    }

    [Fact]
    public void BoolTensorIsNotLoadedIntoFloatWeights() =>
        Refused("bool_bias.pt", "'0.bias' holds Bool values, the model needs floating-point (Float32) weights");

    [Fact]
    public void DictionaryKeyThatIsNotANameIsNamedAsSuch() =>
        Refused("int_key.pt", "not a PyTorch state_dict file: key 1 (an integer) is not a parameter name: only dictionaries of name → tensor are loaded");

    [Theory]
    [InlineData("parameter.pt", "nn.Parameter")]
    [InlineData("whole_model.pt", "nn.Parameter")]
    [InlineData("legacy.pt", "legacy format of torch.save before PyTorch 1.6")]
    public void PickledModulesAndLegacyFilesAreRefusedWithTheReason(string file, string reason) => Refused(file, reason);

    [Fact]
    public void PyBridgesUnpicklerStillWorksAfterValleyReadsAFile()
    {
        // Razorvine's constructor table is global: Valley's constructors must not stay in place after a load.
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        Weights.Load(model, Fixture("mlp_4_5_3_views.pt"));
        var table = TorchSharp.PyBridge.PyTorchUnpickler.UnpickleStateDict(Fixture("mlp_4_5_3.pt"));
        Assert.All(table.Values.Cast<object>(), v => Assert.IsType<Tensor>(v));
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
        Assert.Contains("it calls posix.system, which Valley never runs", e.Message);
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
