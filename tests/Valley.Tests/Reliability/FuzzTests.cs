using System.IO.Compression;
using Valley.Data;
using Valley.Models;
using Xunit;

namespace Valley.Tests.Reliability;

/// <summary>
/// Seeded random mutations of valid files: every reader and loader either succeeds or raises its clean one-line error; nothing
/// else escapes, and nothing aborts the process (a native abort would end the test run).
/// </summary>
public class FuzzTests
{
    public FuzzTests() => TestUtil.Init();

    static byte[] Mutate(byte[] valid, Random rng)
    {
        var b = valid.ToList();
        int kind = rng.Next(6);
        switch (kind)
        {
            case 0: // flip a few bytes anywhere
                for (int k = 0, n = rng.Next(1, 8); k < n && b.Count > 0; k++) b[rng.Next(b.Count)] = (byte)rng.Next(256);
                break;
            case 1: // flip bytes in the first 64 (headers)
                for (int k = 0, n = rng.Next(1, 4); k < n && b.Count > 0; k++) b[rng.Next(Math.Min(64, b.Count))] = (byte)rng.Next(256);
                break;
            case 2: // truncate
                b = b.Take(rng.Next(b.Count)).ToList();
                break;
            case 3: // insert junk
                b.InsertRange(rng.Next(b.Count + 1), Enumerable.Range(0, rng.Next(1, 16)).Select(_ => (byte)rng.Next(256)));
                break;
            case 4: // delete a run
                if (b.Count > 2) { int at = rng.Next(b.Count - 1); b.RemoveRange(at, Math.Min(rng.Next(1, 32), b.Count - at)); }
                break;
            default: // extreme values in the header
                if (b.Count > 8) { int at = rng.Next(Math.Min(32, b.Count - 4)); b[at] = 0xff; b[at + 1] = 0xff; b[at + 2] = 0x7f; b[at + 3] = 0xff; }
                break;
        }
        return b.ToArray();
    }

    static void Fuzz(string name, byte[] valid, int cases, Action<string> load, Func<Exception, bool> clean)
    {
        var dir = TestUtil.TempDir("fuzz-" + name);
        var rng = new Random(12345);
        int ok = 0, refused = 0;
        for (int c = 0; c < cases; c++)
        {
            var path = Path.Combine(dir, name);
            File.WriteAllBytes(path, Mutate(valid, rng));
            try { load(path); ok++; }
            catch (Exception e) when (clean(e)) { refused++; Assert.DoesNotContain('\n', e.Message.Trim()); }
            catch (Exception e) { Assert.Fail($"{name} case {c}: {e.GetType().Name}: {e.Message}"); }
        }
        Assert.Equal(cases, ok + refused);
        Assert.True(refused > cases / 10, $"{name}: only {refused} of {cases} mutations were refused");
    }

    [Fact]
    public void IdxReaderGivesOnlyCleanErrors()
    {
        var dir = TestUtil.TempDir("idx-src");
        IdxReader.WriteBytes(Path.Combine(dir, "img"), [6, 4, 4], Enumerable.Range(0, 96).Select(i => (byte)i).ToArray(), gzip: false);
        IdxReader.WriteBytes(Path.Combine(dir, "img.gz"), [6, 4, 4], Enumerable.Range(0, 96).Select(i => (byte)i).ToArray(), gzip: true);
        Fuzz("images-idx3-ubyte", File.ReadAllBytes(Path.Combine(dir, "img")), 2000, p => IdxReader.Read(p), e => e is DataException);
        Fuzz("images-idx3-ubyte.gz", File.ReadAllBytes(Path.Combine(dir, "img.gz")), 1000, p => IdxReader.Read(p), e => e is DataException);
    }

    [Fact]
    public void CsvReaderGivesOnlyCleanErrors()
    {
        var valid = System.Text.Encoding.UTF8.GetBytes("a,b,c,label\n0.5,1,2,0\n-1e-3,3.25,4,2\n7,8,9,1\n");
        Fuzz("data.csv", valid, 2000, p => { using var d = DataSources.OpenCsv(p); }, e => e is DataException);
    }

    [Theory]
    [InlineData("w.dat", 700)]
    [InlineData("w.pt", 700)]
    [InlineData("w.safetensors", 700)]
    public void WeightLoadersGiveOnlyCleanErrors(string file, int cases)
    {
        var model = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 1);
        var src = Path.Combine(TestUtil.TempDir("w-src"), file);
        Weights.Save(model, src);
        var target = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 2);
        Fuzz(file, File.ReadAllBytes(src), cases, p =>
        {
            Weights.Load(target, p);
            Assert.All(target.parameters(), t => Assert.True(TorchSharp.torch.isfinite(t).all().ToBoolean()));
        }, e => e is WeightsException);
    }

    [Theory]
    [InlineData("mlp_4_5_3_views.pt", 1500)]
    [InlineData("dtypes.pt", 500)]
    public void PyTorchPickleMutationsGiveOnlyCleanErrors(string fixture, int cases)
    {
        // Raw mutations of a .pt file mostly break its zip structure or CRCs; these rewrite the archive around a mutated
        // data.pkl, so that the unpickler and the checks after it see them.
        var entries = new List<(string Name, byte[] Data)>();
        using (var zip = ZipFile.OpenRead(Path.Combine(AppContext.BaseDirectory, "Fixtures", fixture)))
            foreach (var e in zip.Entries)
            {
                using var s = e.Open();
                using var m = new MemoryStream();
                s.CopyTo(m);
                entries.Add((e.FullName, m.ToArray()));
            }
        var target = ModelSpec.Parse("mlp:4-5-3").Build([4], 3, seed: 2);
        var pkl = entries.Single(e => e.Name.EndsWith("/data.pkl")).Data;
        var dir = TestUtil.TempDir("fuzz-pkl");
        var rng = new Random(4321);
        int ok = 0, refused = 0;
        for (int c = 0; c < cases; c++)
        {
            var path = Path.Combine(dir, fixture);
            using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
                foreach (var (name, data) in entries)
                {
                    using var s = zip.CreateEntry(name, CompressionLevel.NoCompression).Open();
                    s.Write(name.EndsWith("/data.pkl") ? Mutate(pkl, rng) : data);
                }
            try
            {
                foreach (var t in Weights.ReadStateDict(path).Values) t.Dispose();
                Weights.Load(target, path);
                ok++;
            }
            catch (WeightsException e) { refused++; Assert.DoesNotContain('\n', e.Message.Trim()); }
            catch (Exception e) { Assert.Fail($"{fixture} case {c}: {e.GetType().Name}: {e.Message}"); }
            File.Delete(path);
        }
        Assert.True(refused > cases / 10, $"{fixture}: only {refused} of {cases} mutations were refused");
    }
}
