using Valley.Data;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Data;

/// <summary>The .npy/.npz reader against arrays written by NumPy (scripts/fixtures/make_data_fixtures.py).</summary>
public class NumPyFileTests
{
    public NumPyFileTests() => TestUtil.Init();

    internal static string Fixture(params string[] name) => Path.Combine([AppContext.BaseDirectory, "Fixtures", "Data", .. name]);

    static float[] Floats(Tensor t) { using var f = t.to(ScalarType.Float32).contiguous(); return f.data<float>().ToArray(); }
    static long[] Longs(Tensor t) { using var l = t.to(ScalarType.Int64).contiguous(); return l.data<long>().ToArray(); }

    static void Dispose(Dictionary<string, Tensor> d) { foreach (var t in d.Values) t.Dispose(); }

    [Theory]
    [InlineData("cls.npz", ScalarType.Float32, ScalarType.Int64)]
    [InlineData("cls_deflated.npz", ScalarType.Float32, ScalarType.Int64)]
    [InlineData("cls_f16.npz", ScalarType.Float16, ScalarType.Int32)]
    [InlineData("cls_f64.npz", ScalarType.Float64, ScalarType.Byte)]
    [InlineData("cls_be_fortran.npz", ScalarType.Float64, ScalarType.Int16)]
    public void NpzReadsTheSameValuesAsTheCsvInEveryDtypeOrderAndByteOrder(string file, ScalarType xType, ScalarType yType)
    {
        var csv = CsvReader.Read(Fixture("cls.csv"));
        var arrays = NumPyFile.Read(Fixture(file));
        try
        {
            Assert.Equal(["x", "y"], arrays.Keys.Order());
            Assert.Equal(xType, arrays["x"].dtype);
            Assert.Equal(yType, arrays["y"].dtype);
            Assert.Equal([(long)csv.Rows, csv.Columns], arrays["x"].shape);
            Assert.Equal(csv.Features, Floats(arrays["x"]));
            Assert.Equal(csv.Labels!, Longs(arrays["y"]));
        }
        finally { Dispose(arrays); }
    }

    [Theory]
    [InlineData("cls_x.npy")]
    [InlineData("cls_v2.npy")]
    [InlineData("cls_v3.npy")]
    public void NpyOfEveryFormatVersionReadsOneArrayNamedAfterTheFile(string file)
    {
        var csv = CsvReader.Read(Fixture("cls.csv"));
        var arrays = NumPyFile.Read(Fixture(file));
        try
        {
            var (name, x) = Assert.Single(arrays);
            Assert.Equal(Path.GetFileNameWithoutExtension(file), name);
            Assert.Equal(csv.Features, Floats(x));
        }
        finally { Dispose(arrays); }
    }

    [Fact]
    public void FortranOrderOfAThreeDimensionalArrayIsTransposedBack()
    {
        var path = Path.Combine(TestUtil.TempDir("npy-fortran"), "a.npy");
        // The bytes of the C-order [4,3,2] array 0..23 are the Fortran-order [2,3,4] array whose element [i,j,k] is 6k + 2j + i.
        File.WriteAllBytes(path, Npy("<i8", "(2, 3, 4)", fortran: true, Enumerable.Range(0, 24).SelectMany(i => BitConverter.GetBytes((long)i)).ToArray()));
        var a = NumPyFile.Read(path);
        try
        {
            var t = a["a"];
            Assert.Equal([2L, 3, 4], t.shape);
            for (int i = 0; i < 2; i++) for (int j = 0; j < 3; j++) for (int k = 0; k < 4; k++)
                Assert.Equal(6 * k + 2 * j + i, t[i, j, k].ToInt64());
        }
        finally { Dispose(a); }
    }

    /// <summary>A version-1 .npy file with the given header fields and body.</summary>
    internal static byte[] Npy(string descr, string shape, bool fortran, byte[] body)
    {
        var header = $"{{'descr': '{descr}', 'fortran_order': {(fortran ? "True" : "False")}, 'shape': {shape}, }}";
        header = header.PadRight(64 - 11) + "\n";
        return [0x93, .. System.Text.Encoding.Latin1.GetBytes("NUMPY"), 1, 0, (byte)header.Length, 0, .. System.Text.Encoding.Latin1.GetBytes(header), .. body];
    }

    [Theory]
    [InlineData("bad_object.npz", "object array")]
    [InlineData("bad_huge_shape.npy", "truncated: header declares shape (1000000000000, 1000000)")]
    [InlineData("bad_truncated.npy", "truncated: header declares shape (12, 3)")]
    [InlineData("bad_dtype.npz", "dtype '<c8' (complex numbers) is not supported")]
    [InlineData("bad_string_labels.npz", "(strings) is not supported")]
    [InlineData("cls.pt", "a PyTorch file, not a .npz archive")]
    [InlineData("cls.csv", "not a NumPy file")]
    public void BadFilesAreRefusedWithOneLineNamingTheFile(string file, string expected)
    {
        var e = Assert.Throws<DataException>(() => NumPyFile.Read(Fixture(file)));
        Assert.Contains(expected, e.Message);
        Assert.Contains(file, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", "negative dimension")]
    [InlineData("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", "structured array")]
    [InlineData("{'descr': '<f4', 'shape': (2,), }", "lacks")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", "too large")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x", "text after")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': __import__('os'), }", "unexpected")]
    public void MalformedHeadersAreRefused(string header, string expected)
    {
        var e = Assert.Throws<DataException>(() => NumPyFile.ParseHeader("h.npy", header));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void ScalarsAndEmptyArraysRead()
    {
        var h = NumPyFile.ParseHeader("h.npy", "{'descr': '|b1', 'fortran_order': False, 'shape': (), }");
        Assert.Empty(h.Shape);
        Assert.Equal(1, h.Count);
        var dir = TestUtil.TempDir("npy-empty");
        File.WriteAllBytes(Path.Combine(dir, "e.npy"), Npy("<f4", "(0, 3)", false, []));
        var a = NumPyFile.Read(Path.Combine(dir, "e.npy"));
        try { Assert.Equal([0L, 3], a["e"].shape); }
        finally { Dispose(a); }
    }

    [Fact]
    public void ADeclaredSizeBeyondTheMemoryBudgetIsRefusedBeforeAllocating()
    {
        var e = Assert.Throws<DataException>(() => NumPyFile.Read(Fixture("cls_x.npy"), memoryBudget: 100));
        Assert.Contains("memory", e.Message);
    }

    [Fact]
    public void BoolValuesOtherThanZeroAndOneAreRefused()
    {
        var path = Path.Combine(TestUtil.TempDir("npy-bool"), "b.npy");
        File.WriteAllBytes(path, Npy("|b1", "(3,)", false, [0, 1, 7]));
        Assert.Contains("other than 0 and 1", Assert.Throws<DataException>(() => NumPyFile.Read(path)).Message);
    }
}
