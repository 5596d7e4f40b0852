using System.Buffers.Binary;
using System.IO.Compression;
using TorchSharp;
using Valley.Data;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Data;

public class DataTests
{
    public DataTests() => TestUtil.Init();

    /// <summary>A valid MNIST-format folder with n images of size×size and labels i mod 10.</summary>
    static string IdxFolder(int n = 20, int size = 4, bool gzip = true, bool withTest = true)
    {
        var dir = TestUtil.TempDir("idx");
        var img = Enumerable.Range(0, n * size * size).Select(i => (byte)(i % 256)).ToArray();
        var lbl = Enumerable.Range(0, n).Select(i => (byte)(i % 10)).ToArray();
        string gz = gzip ? ".gz" : "";
        IdxReader.WriteBytes(Path.Combine(dir, "train-images-idx3-ubyte" + gz), [n, size, size], img, gzip);
        IdxReader.WriteBytes(Path.Combine(dir, "train-labels-idx1-ubyte" + gz), [n], lbl, gzip);
        if (withTest)
        {
            IdxReader.WriteBytes(Path.Combine(dir, "t10k-images-idx3-ubyte" + gz), [n / 2, size, size], img[..(n / 2 * size * size)], gzip);
            IdxReader.WriteBytes(Path.Combine(dir, "t10k-labels-idx1-ubyte" + gz), [n / 2], lbl[..(n / 2)], gzip);
        }
        return dir;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void IdxFolderReadsGzipAndRawWithPixelsScaledBy255(bool gzip)
    {
        using var split = DataSources.Open(IdxFolder(gzip: gzip));
        Assert.Equal(20, split.Train.Count);
        Assert.Equal([1L, 4L, 4L], split.Train.ExampleShape);
        Assert.Equal(10, split.Test!.Count);
        Assert.Equal(10, split.Train.NumClasses);
        Assert.Equal(17f / 255f, split.Train.X[1, 0, 0, 1].ToSingle());
        Assert.Equal(3L, split.Train.Y[13].ToInt64());
    }

    [Fact]
    public void FashionMnistFromDebianPackageHasItsKnownShapeAndBalance()
    {
        if (!Directory.Exists(DataSources.FashionMnistFolder)) return; // installed by scripts/setup.sh in CI
        using var split = DataSources.Open(null);
        Assert.Equal(60000, split.Train.Count);
        Assert.Equal(10000, split.Test!.Count);
        Assert.Equal([1L, 28L, 28L], split.Train.ExampleShape);
        // Fashion-MNIST is balanced: 6,000 training images per class.
        var counts = bincount(split.Train.Y).data<long>().ToArray();
        Assert.All(counts, c => Assert.Equal(6000, c));
        Assert.InRange(split.Train.X.mean().ToDouble(), 0.28, 0.29); // known mean pixel ≈ 0.286
    }

    static void CorruptCase(Func<string, string> corrupt, string expected)
    {
        var dir = IdxFolder();
        var path = corrupt(dir);
        var e = Assert.Throws<DataException>(() => DataSources.Open(dir));
        Assert.Contains(expected, e.Message);
        Assert.Contains(Path.GetFileName(path), e.Message);
    }

    [Fact]
    public void TruncatedIdxIsReported() => CorruptCase(dir =>
    {
        var p = Path.Combine(dir, "train-images-idx3-ubyte.gz");
        var raw = IdxReader.Read(p);
        IdxReader.WriteBytes(p, [20, 4, 4], raw.Bytes!, gzip: true);
        using var gzs = new System.IO.Compression.GZipStream(File.OpenRead(p), System.IO.Compression.CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gzs.CopyTo(ms);
        var bytes = ms.ToArray();
        gzs.Dispose();
        File.WriteAllBytes(p.Replace(".gz", ""), bytes[..(bytes.Length - 7)]);
        File.Delete(p);
        return p.Replace(".gz", "");
    }, "truncated");

    [Fact]
    public void TruncatedGzipIsReported() => CorruptCase(dir =>
    {
        var p = Path.Combine(dir, "train-labels-idx1-ubyte.gz");
        var b = File.ReadAllBytes(p);
        File.WriteAllBytes(p, b[..(b.Length / 2)]);
        return p;
    }, "truncated");

    [Fact]
    public void WrongMagicNumberIsReported() => CorruptCase(dir =>
    {
        var p = Path.Combine(dir, "train-images-idx3-ubyte.gz");
        File.Delete(p);
        File.WriteAllBytes(p.Replace(".gz", ""), [0x89, 0x50, 0x4e, 0x47, 1, 2, 3, 4]);
        return p.Replace(".gz", "");
    }, "wrong magic number");

    [Fact]
    public void LabelOutOfRangeIsReported() => CorruptCase(dir =>
    {
        var p = Path.Combine(dir, "train-labels-idx1-ubyte.gz");
        IdxReader.WriteBytes(p, [20], Enumerable.Range(0, 20).Select(i => (byte)(i == 5 ? 200 : i % 10)).ToArray(), gzip: true);
        return p;
    }, "label 5 is 200, out of range for 10 classes");

    /// <summary>The header of an IDX file of the given element type and dimensions.</summary>
    static byte[] IdxHeader(byte type, params int[] dims)
    {
        var h = new byte[4 + 4 * dims.Length];
        h[2] = type;
        h[3] = (byte)dims.Length;
        for (int i = 0; i < dims.Length; i++) BinaryPrimitives.WriteInt32BigEndian(h.AsSpan(4 + 4 * i), dims[i]);
        return h;
    }

    [Fact]
    public void HugeFloatLabelIsReportedAsWrittenInTheFile() => CorruptCase(dir =>
    {
        File.Delete(Path.Combine(dir, "train-labels-idx1-ubyte.gz"));
        var p = Path.Combine(dir, "train-labels-idx1-ubyte");
        var bytes = IdxHeader(0x0D, 20).Concat(Enumerable.Range(0, 20).SelectMany(i =>
        {
            var f = new byte[4];
            BinaryPrimitives.WriteSingleBigEndian(f, i == 5 ? 1e30f : i % 10);
            return f;
        })).ToArray();
        File.WriteAllBytes(p, bytes);
        return p;
    }, "label 5 is 1E+30, out of range for 10 classes");

    /// <summary>A gzip file holding an IDX header, <paramref name="body"/>, then <paramref name="zeros"/> zero bytes (small on disk).</summary>
    static void WriteGzipIdx(string path, byte[] header, byte[] body, long zeros)
    {
        using var gz = new GZipStream(File.Create(path), CompressionLevel.Fastest);
        gz.Write(header);
        gz.Write(body);
        var chunk = new byte[1 << 20];
        for (long written = 0; written < zeros; written += chunk.Length) gz.Write(chunk, 0, (int)Math.Min(chunk.Length, zeros - written));
    }

    /// <summary>Reads the file and returns the error and the bytes this thread allocated meanwhile.</summary>
    static (DataException Error, long Allocated) ReadFailing(string path)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<DataException>(() => IdxReader.Read(path));
        return (e, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    [Fact]
    public void GzipIdxDeclaringMoreThanAnArrayHoldsIsRefusedBeforeInflating()
    {
        var p = Path.Combine(TestUtil.TempDir("idx-huge"), "train-images-idx3-ubyte.gz");
        WriteGzipIdx(p, IdxHeader(0x08, 2, 1024, 1024, 1024), [], zeros: 64 << 20); // declares 2 GiB, holds 64 MiB
        Assert.True(new FileInfo(p).Length < 1 << 20);
        var (e, allocated) = ReadFailing(p);
        Assert.Contains("header declares 2×1024×1024×1024 values (2147483648 bytes), more than", e.Message);
        Assert.True(allocated < 8 << 20, $"allocated {allocated} bytes");
    }

    [Fact]
    public void GzipIdxInflatesOnlyWhatTheHeaderDeclares()
    {
        var p = Path.Combine(TestUtil.TempDir("idx-trailing"), "train-labels-idx1-ubyte.gz");
        WriteGzipIdx(p, IdxHeader(0x08, 10, 4), new byte[40], zeros: 64 << 20);
        var (e, allocated) = ReadFailing(p);
        Assert.Contains("trailing data after the 10×4 values declared in the header", e.Message);
        Assert.True(allocated < 8 << 20, $"allocated {allocated} bytes");
    }

    [Fact]
    public void IdxLargerThanTheMemoryBudgetIsRefusedBeforeReading()
    {
        var p = Path.Combine(TestUtil.TempDir("idx-budget"), "images");
        IdxReader.WriteBytes(p, [1000, 1000], new byte[1000 * 1000], gzip: false);
        Assert.Equal([1000, 1000], IdxReader.Read(p, memoryBudget: 5_000_000).Shape);
        var e = Assert.Throws<DataException>(() => IdxReader.Read(p, memoryBudget: 4_000_000));
        Assert.Contains("header declares 1000×1000 values, which need 5 MB to load; 4 MB of memory is available", e.Message);
    }

    [Fact]
    public void LabelCountMismatchIsReported() => CorruptCase(dir =>
    {
        var p = Path.Combine(dir, "train-labels-idx1-ubyte.gz");
        IdxReader.WriteBytes(p, [19], new byte[19], gzip: true);
        return p;
    }, "19 labels but");

    [Fact]
    public void MissingFolderAndMissingFilesAreReported()
    {
        Assert.Contains("no such file or folder", Assert.Throws<DataException>(() => DataSources.Open("/nonexistent/valley")).Message);
        var dir = TestUtil.TempDir("empty");
        Assert.Contains("no train-images", Assert.Throws<DataException>(() => DataSources.Open(dir)).Message);
        Assert.Contains("file not found", Assert.Throws<DataException>(() => IdxReader.Read(Path.Combine(dir, "x.idx"))).Message);
    }

    [Fact]
    public void NonFiniteFloatIdxIsReported()
    {
        var raw = new byte[] { 0, 0, 0x0D, 1, 0, 0, 0, 2, 0x3f, 0x80, 0, 0, 0x7f, 0xc0, 0, 0 }; // [1.0, NaN]
        Assert.Contains("not finite", Assert.Throws<DataException>(() => IdxReader.Parse("f.idx", raw)).Message);
    }

    static string Csv(string text)
    {
        var p = Path.Combine(TestUtil.TempDir("csv"), "data.csv");
        File.WriteAllText(p, text);
        return p;
    }

    [Fact]
    public void CsvClassificationAndRegressionLoad()
    {
        using var c = DataSources.Open(Csv("a,b,label\n0.5,1,0\n2,-1e-3,2\n")).Train;
        Assert.Equal(TaskKind.Classification, c.Task);
        Assert.Equal(3, c.NumClasses);
        Assert.Equal(-1e-3f, c.X[1, 1].ToSingle());
        using var r = DataSources.Open(Csv("target,x\n1.5,2\n-3,4\n")).Train;
        Assert.Equal(TaskKind.Regression, r.Task);
        Assert.Equal(-3f, r.Y[1].ToSingle());
        Assert.Equal(4f, r.X[1, 0].ToSingle());
    }

    [Theory]
    [InlineData("a,b,label\n1,2,0\n1,2\n", "line 3: 2 columns, the header has 3")]
    [InlineData("a,b,label\n1,NaN,0\n", "not finite")]
    [InlineData("a,b,label\n1,inf,0\n", "not finite")]
    [InlineData("a,b,label\n1,x,0\n", "'x' is not a number")]
    [InlineData("a,b,label\n1,2,-1\n", "not a non-negative integer")]
    [InlineData("a,b,label\n1,2,2147483647\n", "line 2: label 2147483647 is too large; at most 1000000 classes")]
    [InlineData("a,b,label\n1,2,0\n1,2,4294967296\n", "line 3: label 4294967296 is too large")]
    [InlineData("a,b,label\n1,2,99999999999999999999\n", "line 2: label 99999999999999999999 is too large")]
    [InlineData("a,b,label\n1,2,1000000\n", "line 2: label 1000000 is too large")]
    [InlineData("a,b,c\n1,2,3\n", "neither a 'label' nor a 'target'")]
    [InlineData("", "empty file")]
    [InlineData("a,label\n", "no data rows")]
    public void BadCsvGivesOneClearError(string text, string expected)
    {
        var p = Csv(text);
        var e = Assert.Throws<DataException>(() => DataSources.Open(p));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith(p, e.Message);
    }

    [Fact]
    public void NegativeClassCountIsRefusedNotInferred()
    {
        foreach (var path in new[] { Csv("a,label\n1,0\n"), IdxFolder() })
        {
            var e = Assert.Throws<ValleyException>(() => DataSources.Open(path, classes: -3));
            Assert.Equal("--classes: must be positive (omit it to infer the count from the labels), got -3", e.Message);
        }
        using var inferred = DataSources.Open(Csv("a,label\n1,0\n2,4\n"), classes: 0);
        Assert.Equal(5, inferred.Train.NumClasses);
    }

    [Fact]
    public void DatasetRefusesBadLabelsAndInputsInOneLineNamingIt()
    {
        using var x = zeros(4, 2);
        string Refused(Tensor inputs, Tensor targets, TaskKind task = TaskKind.Classification, int classes = 3) =>
            Assert.Throws<ValleyException>(() => new Dataset("toy", inputs, targets, task, classes)).Message;
        Assert.Equal("toy: label 5 is out of range for 3 classes (labels must be in [0, 3))", Refused(x, tensor(new long[] { 0, 1, 5, 0 })));
        Assert.StartsWith("toy: label -1 is out of range", Refused(x, tensor(new long[] { 0, -1, 2, 0 })));
        Assert.Contains("toy: classification labels must be int64", Refused(x, tensor(new int[] { 0, 1, 2, 0 })));
        Assert.Contains("toy: classification labels must have shape [N]", Refused(x, zeros([4, 1], ScalarType.Int64)));
        Assert.Contains("toy: inputs must be floating point", Refused(zeros([4, 2], ScalarType.Int64), tensor(new long[] { 0, 1, 2, 0 })));
        Assert.Contains("toy: regression targets must be floating point", Refused(x, tensor(new long[] { 0, 1, 2, 0 }), TaskKind.Regression, 1));
        Assert.Contains("toy: 0 classes", Refused(x, tensor(new long[] { 0, 0, 0, 0 }), classes: 0));
        using var ok = new Dataset("toy", x.clone(), tensor(new long[] { 0, 1, 2, 0 }), TaskKind.Classification, 3);
        Assert.Equal(3, ok.NumClasses);
    }

    /// <summary>Where a float32 or int64 tensor's storage starts.</summary>
    static long Address(Tensor t) => (long)(t.dtype == ScalarType.Int64 ? t.storage<long>().data_ptr() : t.storage<float>().data_ptr());

    [Fact]
    public void LoadedTensorsLiveInLibTorchMemoryNotInManagedArrays()
    {
        // A tensor backed by a pinned .NET array starts wherever the array does; LibTorch aligns its own allocations to 64 bytes.
        var csv = Csv("a,b,label\n0.5,1,0\n2,-1e-3,2\n");
        var idx = IdxFolder(gzip: false, withTest: false);
        var odd = new List<byte[]>();
        for (int i = 0; i < 8; i++)
        {
            odd.Add(new byte[8 * i + 1]); // moves where the next managed arrays start
            using var c = DataSources.OpenCsv(csv);
            using var m = DataSources.Open(idx);
            foreach (var (what, t) in new[] { ("csv X", c.X), ("csv Y", c.Y), ("idx X", m.Train.X), ("idx Y", m.Train.Y) })
                Assert.True(Address(t) % 64 == 0, $"load {i}: {what} starts at 0x{Address(t):x}");
        }
        GC.KeepAlive(odd);
    }

    [Fact]
    public void OwnedTensorCopiesTheArrayInChunks()
    {
        var values = Enumerable.Range(0, 10).Select(i => (float)i).ToArray();
        using var t = OwnedTensor.From(values, 2, 5);
        values[0] = 99f; // the tensor holds a copy
        Assert.Equal(0f, t[0, 0].ToSingle());
        Assert.Equal([2L, 5L], t.shape);
        using var chunked = OwnedTensor.From<long>(Enumerable.Range(0, 10).Select(i => (long)i).ToArray(), [10], chunkBytes: 24); // 3 values a step
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (long)i), chunked.data<long>().ToArray());
        Assert.Throws<ArgumentException>(() => OwnedTensor.From(values, 3, 3));
    }

    [Fact]
    public void SubsetIsSeededAndFixed()
    {
        using var d = Synthetic.GaussianMixture(100, 3, 2, seed: 1);
        using var a = d.Subset(10, seed: 5);
        using var b = d.Subset(10, seed: 5);
        using var c = d.Subset(10, seed: 6);
        Assert.True(a.X.eq(b.X).all().ToBoolean());
        Assert.False(a.X.eq(c.X).all().ToBoolean());
        Assert.Throws<ValleyException>(() => d.Subset(0, 1));
    }

    [Fact]
    public void BatchesCoverTheDataWithoutCopying()
    {
        using var d = Synthetic.GaussianMixture(10, 3, 2, seed: 1);
        var sizes = d.Batches(4).Select(b => b.Size).ToArray();
        Assert.Equal([4L, 4L, 2L], sizes);
        foreach (var (x, _, _) in d.Batches(4))
        {
            x[0, 0] = 1234f; // a view: writing through it changes the data set
            break;
        }
        Assert.Equal(1234f, d.X[0, 0].ToSingle());
        // The views go when the pass ends: a pass leaves no handles behind.
        var stats = TorchSharp.DisposeScopeManager.Statistics;
        long live = stats.ThreadTotalLiveCount;
        foreach (var _ in d.Batches(3)) { }
        Assert.Equal(live, stats.ThreadTotalLiveCount);
    }
}
