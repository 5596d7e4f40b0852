using Valley.Cli;
using Xunit;

namespace Valley.Tests.Cli;

public class CliErrorTests
{
    public CliErrorTests() => TestUtil.Init();

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = ValleyCli.RunAsync(args, o, e).GetAwaiter().GetResult();
        return (code, o.ToString(), e.ToString());
    }

    [Theory]
    [InlineData(new[] { "eval", "--bogus" }, "--bogus")]
    [InlineData(new[] { "eval", "--dtype", "float16" }, "float16")]
    [InlineData(new[] { "eval", "--data", "/nonexistent/valley-data" }, "/nonexistent/valley-data: no such file or folder")]
    [InlineData(new[] { "eval", "--model", "mlp:100-10" }, "--model mlp:100-10: the data has 784 features")]
    [InlineData(new[] { "eval", "--subset", "-5" }, "--subset")]
    [InlineData(new[] { "eval", "--weights", "/nonexistent/w.pt" }, "/nonexistent/w.pt: file not found")]
    [InlineData(new[] { "eval", "--threads", "-1" }, "--threads")]
    [InlineData(new[] { "eval", "--layer", "9" }, "--layer: no trainable parameter matches")]
    public void BadInputGivesOneLineErrorAndExitCode1(string[] args, string expected)
    {
        if (!Directory.Exists(Valley.Data.DataSources.FashionMnistFolder) && !args.Contains("--bogus") && !args.Contains("float16")) return;
        var (code, _, err) = Run(args);
        Assert.Equal(ValleyCli.ExitBadInput, code);
        Assert.Contains(expected, err);
        Assert.Single(err.Trim().Split('\n'));
        Assert.StartsWith("error: ", err);
    }

    [Fact]
    public void DiagnosisOfTooOldLibStdCxxNamesTheRealCauseAndTheFix()
    {
        var msg = TorchRuntime.Diagnose("This application or script uses TorchSharp but doesn't contain a reference to libtorch-cpu-linux-x64", ("/lib/x86_64-linux-gnu/libstdc++.so.6", false));
        Assert.Contains("GLIBCXX_3.4.32", msg);
        Assert.Contains("scripts/setup.sh", msg);
        Assert.DoesNotContain("doesn't contain a reference", msg);
    }

    [Fact]
    public void HugePagesAreOnForTheProcessUnlessTheEnvironmentSaidOtherwise()
    {
        // TestUtil calls it first, as the valley tool's Main does. A value the shell set is kept (0 opts out), and
        // .NET's view of the environment is the one the process started with, so it tells whether the shell set one.
        string? shell = Environment.GetEnvironmentVariable("THP_MEM_ALLOC_ENABLE");
        bool on = TorchRuntime.EnableHugePageAllocations();
        if (!OperatingSystem.IsLinux()) Assert.False(on);
        else Assert.Equal(shell is null || shell == "1", on);
    }
}
