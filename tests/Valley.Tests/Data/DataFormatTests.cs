using Valley.Curvature;
using Valley.Data;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Data;

/// <summary>
/// Every tensor-data format reads exactly the examples of its CSV or IDX equivalent (fixtures written by
/// scripts/fixtures/make_data_fixtures.py), and bad files are refused with one line naming the file.
/// </summary>
public class DataFormatTests
{
    public DataFormatTests() => TestUtil.Init();

    static string F(params string[] name) => NumPyFileTests.Fixture(name);

    static bool Same(Tensor a, Tensor b) => a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().ToBoolean();

    static void AssertSame(Dataset expected, Dataset actual)
    {
        Assert.Equal(expected.Count, actual.Count);
        Assert.Equal(expected.ExampleShape, actual.ExampleShape);
        Assert.Equal(expected.Task, actual.Task);
        Assert.Equal(expected.NumClasses, actual.NumClasses);
        Assert.Equal(ScalarType.Float32, actual.X.dtype);
        Assert.True(Same(expected.X, actual.X), $"{actual.Name}: inputs differ");
        Assert.Equal(expected.Y.dtype, actual.Y.dtype);
        Assert.True(Same(expected.Y, actual.Y), $"{actual.Name}: targets differ");
    }

    [Theory]
    [InlineData("cls.npz", null)]
    [InlineData("cls_deflated.npz", null)]
    [InlineData("cls_f16.npz", null)]
    [InlineData("cls_f64.npz", null)]
    [InlineData("cls_be_fortran.npz", null)]
    [InlineData("cls.pt", null)]
    [InlineData("cls.safetensors", null)]
    [InlineData("cls_x.npy", "cls_y.npy")]
    [InlineData("cls_v3.npy", "cls_y.npy")]
    public void EveryFormatReadsTheExamplesOfTheCsv(string file, string? labels)
    {
        using var csv = DataSources.Open(F("cls.csv"));
        using var split = DataSources.Open(F(file), labels: labels is null ? null : F(labels));
        AssertSame(csv.Train, split.Train);
        Assert.Null(split.Test);
    }

    [Theory]
    [InlineData("cls_split.npz")]
    [InlineData("cls_folder")]
    public void TrainAndTestSplitsComeFromTheFileAsFromTheCsvFolder(string source)
    {
        using var csv = DataSources.Open(F("cls_split"));
        using var split = DataSources.Open(F(source));
        AssertSame(csv.Train, split.Train);
        AssertSame(csv.Test!, split.Test!);
    }

    [Theory]
    [InlineData("reg.npz")]
    [InlineData("reg.pt")]
    public void FloatTargetsAreRegressionAsInTheCsv(string file)
    {
        using var csv = DataSources.Open(F("reg.csv"));
        using var split = DataSources.Open(F(file));
        AssertSame(csv.Train, split.Train);
    }

    [Fact]
    public void BoolLabelsAreTwoClasses()
    {
        using var csv = DataSources.Open(F("bin.csv"));
        using var npz = DataSources.Open(F("bin_bool.npz"));
        AssertSame(csv.Train, npz.Train);
        Assert.Equal(2, npz.Train.NumClasses);
    }

    [Fact]
    public void ImagesReadAsTheIdxFolderDoes()
    {
        using var idx = DataSources.Open(F("img"));
        using var npz = DataSources.Open(F("img.npz"), classes: 10);
        AssertSame(idx.Train, npz.Train);
    }

    [Fact]
    public void SequencesKeepTheirShapeAndFloat64ComputeKeepsFloat64Inputs()
    {
        using var seq = DataSources.Open(F("seq.npz"));
        Assert.Equal([5L, 2], seq.Train.ExampleShape);
        Assert.Equal(2, seq.Train.NumClasses);
        using var f64 = DataSources.Open(F("cls_f64.npz"), dtype: ScalarType.Float64);
        Assert.Equal(ScalarType.Float64, f64.Train.X.dtype);
        using var csv = DataSources.Open(F("cls.csv"));
        Assert.True(Same(csv.Train.X.to(ScalarType.Float64), f64.Train.X));
    }

    [Fact]
    public void TaskDecidesWhenAsked()
    {
        // Integer labels as regression targets; whole-number float labels as classes.
        using var asRegression = DataSources.Open(F("cls.npz"), task: TaskKind.Regression);
        Assert.Equal(TaskKind.Regression, asRegression.Train.Task);
        Assert.Equal(ScalarType.Float32, asRegression.Train.Y.dtype);
        using var regression = DataSources.Open(F("cls.npz"), task: TaskKind.Regression);
        var path = Path.Combine(TestUtil.TempDir("task"), "float-labels.npz");
        using var cls = DataSources.Open(F("cls.npz"));
        // A float-label copy written through the reader's own test helper: y as float32 whole numbers.
        WriteNpz(path, ("x", "<f4", cls.Train.X), ("y", "<f4", cls.Train.Y.to(ScalarType.Float32)));
        using var asClasses = DataSources.Open(path, task: TaskKind.Classification);
        AssertSame(cls.Train, asClasses.Train);
        var e = Assert.Throws<DataException>(() => DataSources.Open(F("cls.csv"), task: TaskKind.Regression));
        Assert.Contains("class labels (classification), not regression targets", e.Message);
    }

    /// <summary>
    /// A test split whose examples (or regression targets) have another shape than the training split's is one line naming
    /// the array; the message was once built from a disposed tensor (an internal error).
    /// </summary>
    [Fact]
    public void ATestSplitOfAnotherShapeIsOneLine()
    {
        using var cls = DataSources.Open(F("cls.npz"));
        var path = Path.Combine(TestUtil.TempDir("split-shape"), "split.npz");
        using var narrow = cls.Train.X.narrow(1, 0, cls.Train.X.shape[1] - 1);
        WriteNpz(path, ("x_train", "<f4", cls.Train.X), ("y_train", "<i8", cls.Train.Y), ("x_test", "<f4", narrow), ("y_test", "<i8", cls.Train.Y));
        var e = Assert.Throws<DataException>(() => DataSources.Open(path));
        Assert.Contains("'x_test' examples have shape", e.Message);
        using var reg = DataSources.Open(F("reg.npz"));
        var regPath = Path.Combine(TestUtil.TempDir("split-shape"), "reg.npz");
        using var wide = reg.Train.Y.reshape(-1, 1).repeat(1, 2);
        WriteNpz(regPath, ("x_train", "<f4", reg.Train.X), ("y_train", "<f4", reg.Train.Y), ("x_test", "<f4", reg.Train.X), ("y_test", "<f4", wide));
        var r = Assert.Throws<DataException>(() => DataSources.Open(regPath));
        Assert.Contains("'y_test' targets have shape", r.Message);
    }

    /// <summary>A stored .npz of the given arrays (C order, little-endian).</summary>
    internal static void WriteNpz(string path, params (string Name, string Descr, Tensor T)[] arrays)
    {
        using var zip = new System.IO.Compression.ZipArchive(File.Create(path), System.IO.Compression.ZipArchiveMode.Create);
        foreach (var (name, descr, t) in arrays)
        {
            var shape = t.dim() == 1 ? $"({t.shape[0]},)" : $"({string.Join(", ", t.shape)})";
            using var c = t.contiguous();
            var bytes = NumPyFileTests.Npy(descr, shape, false, c.bytes.ToArray());
            using var s = zip.CreateEntry(name + ".npy", System.IO.Compression.CompressionLevel.NoCompression).Open();
            s.Write(bytes);
        }
    }

    [Theory]
    [InlineData("bad_object.npz", "object array (dtype 'O', a pickle)")]
    [InlineData("bad_count.npz", "'y' has shape [11] but 'x' holds 12 examples")]
    [InlineData("bad_nan.npz", "'x' example 3 holds NaN or infinite values")]
    [InlineData("bad_inf.pt", "'x' example 0 holds NaN or infinite values")]
    [InlineData("bad_negative_label.npz", "'y' label 4 is -1, not a class index")]
    [InlineData("bad_missing_keys.npz", "no array 'x': expected arrays 'x' and 'y', or 'x_train', 'y_train' (and optionally 'x_test', 'y_test'); the file holds 'inputs' [12×3] float32, 'targets' [12] int64")]
    [InlineData("bad_dtype.npz", "complex numbers")]
    [InlineData("bad_string_labels.npz", "strings")]
    [InlineData("bad_huge_shape.npy", "truncated: header declares shape (1000000000000, 1000000)")]
    [InlineData("bad_truncated.npy", "truncated")]
    [InlineData("bad_evil.pt", "posix.system, which Valley never runs")]
    [InlineData("bad_list.pt", "entry 'x' is a list, not a tensor")]
    [InlineData("bad_uint8_inputs.npz", "'x' holds uint8 values; inputs must be float16, float32 or float64")]
    public void BadFilesAreRefusedWithOneLineNamingTheFile(string file, string expected)
    {
        File.Delete("/tmp/valley-pwned");
        var e = Assert.Throws<DataException>(() => DataSources.Open(F(file), labels: file.EndsWith(".npy") ? F("cls_y.npy") : null));
        Assert.Contains(expected, e.Message);
        Assert.Contains(file, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.False(File.Exists("/tmp/valley-pwned"));
    }

    [Fact]
    public void DamagedArchivesAreRefusedAsSuch()
    {
        var dir = TestUtil.TempDir("npz-damaged");
        var raw = File.ReadAllBytes(F("cls.npz"));
        File.WriteAllBytes(Path.Combine(dir, "cut.npz"), raw[..(raw.Length - 30)]);
        Assert.Contains("cut.npz: corrupt zip", Assert.Throws<DataException>(() => DataSources.Open(Path.Combine(dir, "cut.npz"))).Message);
        // One flipped byte in a stored array: its CRC-32 no longer matches.
        var flipped = (byte[])raw.Clone();
        flipped[200] ^= 0x40;
        File.WriteAllBytes(Path.Combine(dir, "flipped.npz"), flipped);
        Assert.Contains("flipped.npz: entry x.npy does not match its CRC-32", Assert.Throws<DataException>(() => DataSources.Open(Path.Combine(dir, "flipped.npz"))).Message);
    }

    [Fact]
    public void LabelsBeyondTheClassCountAndFloatLabelsAsClassesAreRefused()
    {
        var e = Assert.Throws<DataException>(() => DataSources.Open(F("cls.npz"), classes: 2));
        Assert.Contains("'y' label 2 is 2, out of range for 2 classes", e.Message);
        e = Assert.Throws<DataException>(() => DataSources.Open(F("bad_label_float_cls.npz"), task: TaskKind.Classification));
        Assert.Contains("'y' value 0 is 0.5, not a class label", e.Message);
        e = Assert.Throws<DataException>(() => DataSources.Open(Path.Combine(AppContext.BaseDirectory, "Fixtures", "mlp_4_5_3.pt")));
        Assert.Contains("no array 'x'", e.Message);
        Assert.Contains("'0.weight' [5×4] float32", e.Message);
        Assert.Contains("(model weights? pass them as --weights)", e.Message);
        e = Assert.Throws<DataException>(() => DataSources.Open(F("cls_x.npy")));
        Assert.Contains("cls_x.npy: a .npy file holds one array; give its labels", e.Message);
        e = Assert.Throws<DataException>(() => DataSources.Open(F("cls.csv"), labels: F("cls_y.npy")));
        Assert.Contains("goes with a tensor file of inputs", e.Message);
    }

    [Fact]
    public void SubsetsShardsAndStandardizationWorkAsForCsv()
    {
        var csvReq = new DataRequest { Path = F("cls.csv"), Standardize = true, Subset = 7, Seed = 3 };
        var npzReq = csvReq with { Path = F("cls.npz") };
        var pairReq = csvReq with { Path = F("cls_x.npy"), Labels = F("cls_y.npy") };
        using var a = DistributedData.LoadLocal(csvReq, Valley.Distributed.SingleProcess.Instance);
        using var b = DistributedData.LoadLocal(npzReq, Valley.Distributed.SingleProcess.Instance);
        using var c = DistributedData.LoadLocal(pairReq, Valley.Distributed.SingleProcess.Instance);
        Assert.Equal(7, b.Train.Count);
        Assert.True(Same(a.Train.X, b.Train.X) && Same(a.Train.Y, b.Train.Y));
        Assert.True(Same(a.Train.X, c.Train.X) && Same(a.Train.Y, c.Train.Y));
    }

    sealed class FakeRank(int rank, int size) : Valley.Distributed.IProcessGroup
    {
        public int Rank => rank;
        public int Size => size;
        public void Sum(double[] values) => throw new NotSupportedException();
        public double[] AllGather(double[] values) => throw new NotSupportedException();
        public byte[] Broadcast(byte[] value, int root = 0) => throw new NotSupportedException();
        public byte[][]? Gather(byte[] value, int root = 0) => throw new NotSupportedException();
        public void Barrier() => throw new NotSupportedException();
        public void Abort(int exitCode) => throw new NotSupportedException();
        public double CommunicationSeconds => 0;
    }

    [Fact]
    public void RanksHoldTheShardsOfTheCsvAndRankFilesNameTheirOwnShardOfDataAndLabels()
    {
        for (int r = 0; r < 3; r++)
        {
            var group = new FakeRank(r, 3);
            using var csv = DistributedData.LoadLocal(new DataRequest { Path = F("cls_split") }, group);
            using var npz = DistributedData.LoadLocal(new DataRequest { Path = F("cls_split.npz") }, group);
            AssertSame(csv.Train, npz.Train);
            AssertSame(csv.Test!, npz.Test!);
            Assert.Equal(4, npz.Train.Count);
        }
        // {rank} in --data and --labels: each rank opens its own pair.
        var dir = TestUtil.TempDir("rank-npy");
        for (int r = 0; r < 2; r++)
        {
            File.Copy(F("cls_x.npy"), Path.Combine(dir, $"x{r}.npy"));
            File.Copy(F("cls_y.npy"), Path.Combine(dir, $"y{r}.npy"));
        }
        File.Delete(Path.Combine(dir, "y1.npy"));
        var request = new DataRequest { Path = Path.Combine(dir, "x{rank}.npy"), Labels = Path.Combine(dir, "y{rank}.npy") };
        using (var rank0 = DistributedData.LoadLocal(request, new FakeRank(0, 2))) Assert.Equal(12, rank0.Train.Count);
        var e = Assert.Throws<DataException>(() => DistributedData.LoadLocal(request, new FakeRank(1, 2)));
        Assert.Contains("y1.npy: file not found", e.Message);
    }

    [Fact]
    public void BinaryCrossEntropyEqualsItsClosedForm()
    {
        // ℓ(z, t) = max(z, 0) − z t + log(1 + e^−|z|), mean over all elements.
        double[] z = [2.0, -1.0, 0.5, 0.0], t = [1.0, 0.0, 0.25, 1.0];
        double expected = z.Zip(t, (zi, ti) => Math.Max(zi, 0) - zi * ti + Math.Log(1 + Math.Exp(-Math.Abs(zi)))).Average();
        using var zt = tensor(z, ScalarType.Float64).reshape(2, 2);
        using var tt = tensor(t, ScalarType.Float64).reshape(2, 2);
        using var loss = Losses.BinaryCrossEntropy(zt, tt);
        Assert.Equal(expected, loss.ToDouble(), 12);
        using var labels = tensor(new long[] { 1, 0 });
        Assert.Throws<ValleyException>(() => Losses.BinaryCrossEntropy(zt, labels));
        using var wrong = zeros(2, 3, dtype: ScalarType.Float64);
        Assert.Contains("shape", Assert.Throws<ValleyException>(() => Losses.BinaryCrossEntropy(zt, wrong)).Message);
    }

    [Fact]
    public void BinaryCrossEntropyAccuracyIsTheFractionOfLabelsRightAtLogitZero()
    {
        using var split = DataSources.Open(F("multilabel.npz"));
        Assert.Equal(TaskKind.Regression, split.Train.Task);
        Assert.Equal(2, split.Train.NumClasses);
        var model = torch.nn.Linear(3, 2);
        using (no_grad()) { model.weight.copy_(tensor(new float[] { 1, 0, 0, 0, 1, 0 }).reshape(2, 3)); model.bias!.zero_(); }
        using var obj = new Objective(model, Losses.BinaryCrossEntropy, split.Train);
        var eval = obj.Evaluate();
        using var z = model.call(split.Train.X);
        using var t = split.Train.Y;
        double right = z.gt(0).eq(t.gt(0.5)).to(ScalarType.Float64).mean().ToDouble();
        Assert.Equal(right, eval.Accuracy!.Value, 12);
        using var l = torch.nn.functional.binary_cross_entropy_with_logits(z, t);
        Assert.Equal(l.ToDouble(), eval.Loss, 6);
    }

    [Fact]
    public void TrainingWithBinaryCrossEntropyLowersItAndRecordsItsAccuracy()
    {
        using var split = DataSources.Open(F("multilabel.npz"));
        torch.manual_seed(1);
        var model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2));
        var options = new Valley.Training.TrainOptions { Epochs = 30, BatchSize = 4, LearningRate = 0.1 };
        double before;
        using (var o = new Objective(model, Losses.BinaryCrossEntropy, split.Train)) before = o.Value();
        var log = new Valley.Training.Trainer(model, split.Train, options, Losses.BinaryCrossEntropy).Run();
        using var after = new Objective(model, Losses.BinaryCrossEntropy, split.Train);
        var eval = after.Evaluate();
        Assert.True(eval.Loss < before, $"{eval.Loss} !< {before}");
        Assert.Equal(eval.Loss, log.Epochs[^1].TrainLoss, 6);
        Assert.Equal(eval.Accuracy!.Value, log.Epochs[^1].TrainAccuracy!.Value, 12);
        Assert.Contains("binary cross-entropy needs floating-point targets", Assert.Throws<ValleyException>(() =>
        {
            using var cls = DataSources.Open(F("cls.npz"));
            new Valley.Training.Trainer(torch.nn.Linear(3, 3), cls.Train, options, Losses.BinaryCrossEntropy).Run();
        }).Message);
    }

    [Fact]
    public void LossesAreCheckedAgainstTheTargetsBeforeLibTorchSeesThem()
    {
        using var cls = DataSources.Open(F("cls.npz"));
        using var reg = DataSources.Open(F("reg.npz"));
        var model = torch.nn.Linear(3, 3);
        Assert.Contains("binary cross-entropy needs floating-point targets", Assert.Throws<ValleyException>(() => new Objective(model, Losses.BinaryCrossEntropy, cls.Train)).Message);
        Assert.Contains("cross-entropy needs integer class labels", Assert.Throws<ValleyException>(() => new Objective(model, Losses.CrossEntropy, reg.Train)).Message);
        Assert.Contains("mean squared error needs floating-point targets", Assert.Throws<ValleyException>(() => new Objective(model, Losses.MeanSquaredError, cls.Train)).Message);
        // reg targets go from −4 to 4: not probabilities.
        Assert.Contains("needs targets in [0, 1]", Assert.Throws<ValleyException>(() => new Objective(model, Losses.BinaryCrossEntropy, reg.Train)).Message);
    }
}
