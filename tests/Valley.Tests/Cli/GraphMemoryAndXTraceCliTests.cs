using System.Text.Json;
using Valley.Cli;
using Valley.Cli.Commands;
using Xunit;

namespace Valley.Tests.Cli;

/// <summary>valley hessian --graph-memory and --trace-method xtrace.</summary>
public class GraphMemoryAndXTraceCliTests
{
    public GraphMemoryAndXTraceCliTests() => TestUtil.Init();

    static int Run(out string stdout, out string stderr, params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        stdout = o.ToString();
        stderr = e.ToString();
        return code;
    }

    [Theory]
    [InlineData("0", 0L)]
    [InlineData("2G", 2L << 30)]
    [InlineData("512M", 512L << 20)]
    [InlineData("1.5g", 3L << 29)]
    [InlineData("64KiB", 64L << 10)]
    [InlineData("1000", 1000L)]
    public void SizesParse(string text, long bytes) => Assert.Equal(bytes, CommonOptions.ParseBytes(text));

    [Theory]
    [InlineData("lots")]
    [InlineData("-1G")]
    [InlineData("2X")]
    public void BadSizesAreRefused(string text) => Assert.Null(CommonOptions.ParseBytes(text));

    [Fact]
    public void XTraceWithCachingOffAndOnGivesTheSameTraceAndABadSizeIsOneLine()
    {
        var data = TestUtil.CsvFolder("csvdata", 120, 4, 3, seed: 1);
        double Trace(string graphMemory)
        {
            var outDir = Path.Combine(TestUtil.TempDir("xtrace-out"), "h" + graphMemory);
            int code = Run(out _, out var err, "hessian", "--data", data, "--model", "mlp:4-6-3:tanh", "--subset", "0", "--dtype", "float64", "--batch-size", "50",
                "--trace", "--trace-method", "xtrace", "--graph-memory", graphMemory, "--out", outDir);
            Assert.True(code == 0, err);
            var trace = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "hessian.json"))).RootElement.GetProperty("report").GetProperty("trace");
            Assert.Equal("xtrace", trace.GetProperty("method").GetString());
            return trace.GetProperty("trace").GetDouble();
        }
        double off = Trace("0"), on = Trace("1G");
        Assert.Equal(off, on, 1e-10 * Math.Abs(off));
        int bad = Run(out _, out var message, "hessian", "--data", data, "--model", "mlp:4-6-3", "--trace", "--graph-memory", "lots", "--out", TestUtil.TempDir("bad"));
        Assert.NotEqual(0, bad);
        Assert.Contains("--graph-memory", message);
    }
}
