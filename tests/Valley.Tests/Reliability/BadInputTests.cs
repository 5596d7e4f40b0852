using Valley.Cli;
using Valley.Data;
using Valley.Models;
using Xunit;

namespace Valley.Tests.Reliability;

/// <summary>A corpus of bad inputs for every command: exit code 1, one line naming the file or option, no output left behind.</summary>
public class BadInputTests
{
    public BadInputTests() => TestUtil.Init();

    static readonly Lazy<Corpus> Files = new(() => new Corpus());

    sealed class Corpus
    {
        public readonly string Good, GoodWeights, Empty, NanCsv, Truncated, Magic, Labels, Shape, OtherWeights, NanWeights, NotAFolder, BigLabel, FloatLabel, Huge;
        public Corpus()
        {
            Good = TestUtil.CsvFolder("bad-good", 60, 4, 3, seed: 1);
            var d = TestUtil.TempDir("bad-files");
            Empty = Path.Combine(d, "empty.csv"); File.WriteAllText(Empty, "");
            NanCsv = Path.Combine(d, "nan.csv"); File.WriteAllText(NanCsv, "a,b,c,d,label\n1,2,NaN,4,0\n");
            Truncated = TestUtil.TempDir("bad-trunc");
            IdxReader.WriteBytes(Path.Combine(Truncated, "train-images-idx3-ubyte"), [10, 2, 2], new byte[40], gzip: false);
            IdxReader.WriteBytes(Path.Combine(Truncated, "train-labels-idx1-ubyte"), [10], new byte[10], gzip: false);
            var img = File.ReadAllBytes(Path.Combine(Truncated, "train-images-idx3-ubyte"));
            File.WriteAllBytes(Path.Combine(Truncated, "train-images-idx3-ubyte"), img[..^5]);
            Magic = TestUtil.TempDir("bad-magic");
            File.WriteAllBytes(Path.Combine(Magic, "train-images-idx3-ubyte"), [0x50, 0x4b, 3, 4, 0, 0, 0, 0]);
            IdxReader.WriteBytes(Path.Combine(Magic, "train-labels-idx1-ubyte"), [1], [0], gzip: false);
            Labels = TestUtil.TempDir("bad-labels");
            IdxReader.WriteBytes(Path.Combine(Labels, "train-images-idx3-ubyte"), [3, 2, 2], new byte[12], gzip: false);
            IdxReader.WriteBytes(Path.Combine(Labels, "train-labels-idx1-ubyte"), [3], [0, 1, 200], gzip: false);
            Shape = TestUtil.CsvFolder("bad-shape", 30, 7, 3, seed: 2);
            GoodWeights = Path.Combine(d, "good.dat");
            Weights.Save(ModelSpec.Parse("mlp:4-6-3").Build([4], 3, 1), GoodWeights);
            OtherWeights = Path.Combine(d, "other.dat");
            Weights.Save(ModelSpec.Parse("mlp:4-9-3").Build([4], 3, 1), OtherWeights);
            var m = ModelSpec.Parse("mlp:4-6-3").Build([4], 3, 1);
            using (TorchSharp.torch.no_grad()) m.parameters().First()[0, 0] = float.PositiveInfinity;
            NanWeights = Path.Combine(d, "inf.dat");
            Weights.Save(m, NanWeights);
            NotAFolder = Path.Combine(d, "a-file");
            File.WriteAllText(NotAFolder, "x");
            BigLabel = Path.Combine(d, "big-label.csv"); File.WriteAllText(BigLabel, "a,b,c,d,label\n1,2,3,4,0\n1,2,3,4,2147483647\n");
            FloatLabel = TestUtil.TempDir("bad-float-label");
            IdxReader.WriteBytes(Path.Combine(FloatLabel, "train-images-idx3-ubyte"), [3, 2, 2], new byte[12], gzip: false);
            File.WriteAllBytes(Path.Combine(FloatLabel, "train-labels-idx1-ubyte"), // float32 labels 0, 1, 1e30
                [0, 0, 0x0D, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0x3f, 0x80, 0, 0, .. BitConverter.GetBytes(1e30f).Reverse()]);
            Huge = TestUtil.TempDir("bad-huge");
            using (var gz = new System.IO.Compression.GZipStream(File.Create(Path.Combine(Huge, "train-images-idx3-ubyte.gz")), System.IO.Compression.CompressionLevel.Fastest))
            {
                gz.Write([0, 0, 0x08, 4, 0, 0, 0, 2, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0]); // 2×1024×1024×1024 bytes: 2 GiB declared
                gz.Write(new byte[1 << 20]);
            }
            IdxReader.WriteBytes(Path.Combine(Huge, "train-labels-idx1-ubyte"), [2], [0, 1], gzip: false);
        }
    }

    public static IEnumerable<object[]> Cases()
    {
        string[] commands = ["eval", "hessian", "sharpness", "train", "landscape 1d"];
        var c = Files.Value;
        foreach (var cmd in commands)
        {
            yield return [cmd, new[] { "--data", "/nonexistent/valley" }, "/nonexistent/valley"];
            yield return [cmd, new[] { "--data", c.Empty }, "empty.csv"];
            yield return [cmd, new[] { "--data", c.NanCsv }, "not finite"];
            yield return [cmd, new[] { "--data", c.Truncated }, "truncated"];
            yield return [cmd, new[] { "--data", c.Magic }, "wrong magic number"];
            yield return [cmd, new[] { "--data", c.Labels }, "out of range"];
            yield return [cmd, new[] { "--data", c.BigLabel }, "big-label.csv: line 3: label 2147483647 is too large"];
            yield return [cmd, new[] { "--data", c.FloatLabel }, "label 2 is 1E+30, out of range"];
            yield return [cmd, new[] { "--data", c.Huge }, "header declares 2×1024×1024×1024 values (2147483648 bytes), more than"];
            yield return [cmd, new[] { "--classes", "-3" }, "--classes: must be positive (omit it to infer the count from the labels)"];
            yield return [cmd, new[] { "--data", c.Shape }, "--model mlp:4-6-3"];
            yield return [cmd, new[] { "--weights", c.OtherWeights }, "other.dat"];
            yield return [cmd, new[] { "--weights", c.NanWeights }, "NaN or infinite"];
            yield return [cmd, new[] { "--unknown-option" }, "--unknown-option"];
            yield return [cmd, new[] { "--seed", "abc" }, "abc"];
        }
        foreach (var cmd in new[] { "hessian", "sharpness", "train", "landscape 1d", "study" })
            yield return [cmd, new[] { "--out", Path.Combine(c.NotAFolder, "sub") }, "--out"];
        foreach (var (extra, expected) in new[] { (new[] { "--data", "/nonexistent/valley" }, "/nonexistent/valley"), (new[] { "--data", c.Truncated }, "truncated"),
                                                   (new[] { "--data", c.Magic }, "wrong magic number"), (new[] { "--data", c.Good }, "no test set"),
                                                   (new[] { "--preset", "huge" }, "huge"), (new[] { "--model", "mlp:4-x" }, "--model") })
            yield return ["study", extra, expected];
        yield return ["hessian", new[] { "--top", "100000" }, "--top"];
        yield return ["hessian", new[] { "--tol", "-1" }, "--tol"];
        yield return ["sharpness", new[] { "--rho", "-0.1" }, "--rho"];
        yield return ["train", new[] { "--lr", "-1" }, "--lr"];
        yield return ["train", new[] { "--rho", "-0.5", "--optimizer", "sam" }, "--rho"];
        yield return ["train", new[] { "--momentum", "1.5" }, "--momentum"];
        yield return ["landscape 1d", new[] { "--points", "0" }, "--points"];
        yield return ["landscape 2d", new[] { "--range", "2:1" }, "--range"];
        yield return ["landscape interpolate", new[] { "--from", c.GoodWeights }, "--to is required"];
        yield return ["landscape interpolate", new[] { "--from", "/nonexistent/x.dat", "--to", c.GoodWeights }, "/nonexistent/x.dat"];
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task BadInputGivesOneLineExitCode1AndNoOutput(string command, string[] extra, string expected)
    {
        var outDir = Path.Combine(TestUtil.TempDir("bad-out"), "o");
        var args = command.Split(' ').Concat(["--data", Files.Value.Good, "--model", "mlp:4-6-3"]).ToList();
        if (command != "study") args.AddRange(["--subset", "0"]);
        if (command != "eval") args.AddRange(["--out", outDir]);
        // Later options win where an option is repeated? Not in System.CommandLine: remove defaults that the case overrides.
        foreach (var opt in new[] { "--data", "--out", "--model" })
            if (extra.Contains(opt) && args.IndexOf(opt) is var i and >= 0) args.RemoveRange(i, 2);
        args.AddRange(extra);
        var err = new StringWriter();
        int code = await ValleyCli.RunAsync(args.ToArray(), new StringWriter(), err);
        Assert.True(code == ValleyCli.ExitBadInput, $"exit {code}: {err}");
        var text = err.ToString().Trim();
        Assert.Single(text.Split('\n'));
        Assert.StartsWith("error: ", text);
        Assert.Contains(expected, text);
        if (Directory.Exists(outDir))
            Assert.DoesNotContain(Directory.GetFiles(outDir, "*", SearchOption.AllDirectories), f => !f.EndsWith(".valley.lock") && !f.EndsWith("run.json"));
    }
}
