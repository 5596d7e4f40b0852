using System.Diagnostics;
using System.Globalization;
using TorchSharp;
using Valley.Curvature;
using Valley.Data;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Packaging;

/// <summary>
/// The core package on its own: a console app that references only `Valley` (packed from this build) and TorchSharp-cpu,
/// with its own module and loss, computes the top eigenvalue and the trace of the Hessian; the numbers match the exact
/// Hessian, and neither the figures' nor MPI's packages come along.
/// </summary>
public class CorePackageTests
{
    public CorePackageTests() => TestUtil.Init();

    static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Valley.sln"))) return d.FullName;
        throw new InvalidOperationException("Valley.sln not found");
    }

    static string Run(string file, string args, string cwd, int timeoutSeconds = 600)
    {
        var psi = new ProcessStartInfo(file, args) { WorkingDirectory = cwd, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.True(p.WaitForExit(timeoutSeconds * 1000), $"{file} {args} did not finish in {timeoutSeconds} s");
        Assert.True(p.ExitCode == 0, $"{file} {args}: exit {p.ExitCode}\n{stdout.Result}\n{stderr.Result}");
        return stdout.Result;
    }

    [Fact]
    public void AConsoleAppOnTheCorePackageAloneGetsTheExactTopEigenvalueAndTrace()
    {
        var root = Root();
        var work = TestUtil.TempDir("core-consumer");
        var packages = Path.Combine(work, "packages");
        // A version of its own, so that no earlier package of the same version in NuGet's cache is used.
        var suffix = "consumer." + DateTime.UtcNow.Ticks.ToString(CultureInfo.InvariantCulture);
        Run("dotnet", $"pack \"{Path.Combine(root, "src", "Valley", "Valley.csproj")}\" -c Release --no-build -o \"{packages}\" -p:VersionSuffix={suffix} -nologo", root);
        var nupkg = Directory.GetFiles(packages, "Valley.*.nupkg").Single();
        var version = Path.GetFileNameWithoutExtension(nupkg)["Valley.".Length..];
        var app = Path.Combine(work, "app");
        Directory.CreateDirectory(app);
        var fixture = Path.Combine(AppContext.BaseDirectory, "Fixtures", "CoreConsumer");
        File.Copy(Path.Combine(fixture, "Program.cs"), Path.Combine(app, "Program.cs"));
        File.WriteAllText(Path.Combine(app, "CoreConsumer.csproj"), File.ReadAllText(Path.Combine(fixture, "CoreConsumer.csproj.template")).Replace("$(ValleyVersion)", version));
        File.WriteAllText(Path.Combine(app, "NuGet.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="this-build" value="{packages}" />
                <add key="nuget.org" value="https://api.nuget.org/v3/index.json" />
              </packageSources>
            </configuration>
            """);
        var output = Run("dotnet", "run -c Release", app);
        var assets = File.ReadAllText(Path.Combine(app, "obj", "project.assets.json"));
        // (TorchSharp itself brings SkiaSharp 2.88's managed part; the figures' ScottPlot brings SkiaSharp 3 and HarfBuzz with
        // their native libraries.)
        foreach (var absent in new[] { "ScottPlot", "SkiaSharp.NativeAssets.Linux.NoDependencies", "HarfBuzzSharp", "MPI.NET", "Valley.Reporting", "Valley.Mpi" })
            Assert.DoesNotContain($"\"{absent}/", assets);

        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToDictionary(l => l.Split(' ')[0], l => l.Split(' ')[1..]);
        double lambdaMax = double.Parse(lines["lambda_max"][0], CultureInfo.InvariantCulture);
        double trace = double.Parse(lines["trace"][0], CultureInfo.InvariantCulture), se = double.Parse(lines["trace"][1], CultureInfo.InvariantCulture);

        // The same module, weights, data and loss here, and its exact Hessian.
        using var data = Synthetic.GaussianMixture(n: 96, dim: 5, classes: 3, seed: 1).To(CPU, ScalarType.Float64);
        nn.Module<Tensor, Tensor> model;
        lock (Valley.Models.ModelSpec.GlobalGeneratorLock)
        {
            random.manual_seed(0);
            model = new Residual(5, 7, 3);
        }
        model.to(ScalarType.Float64);
        LossFunction smoothed = (o, t) => nn.functional.cross_entropy(o, t, label_smoothing: 0.1);
        using var objective = new Objective(model, smoothed, data);
        var exact = ExactHessian.Compute(new HessianOperator(objective)).Eigenvalues();
        Assert.Equal(objective.Size.ToString(CultureInfo.InvariantCulture), lines["parameters"][0]);
        Assert.Equal(exact[^1], lambdaMax, 1e-7 * Math.Abs(exact[^1]));
        Assert.True(Math.Abs(trace - exact.Sum()) <= 4 * se, $"trace {trace} ± {se}, exact {exact.Sum()}");
        // Hessian.Of: the three largest eigenvalues and a Hutch++ trace.
        for (int i = 0; i < 3; i++)
            Assert.Equal(exact[^(i + 1)], double.Parse(lines["top3"][i], CultureInfo.InvariantCulture), 1e-6 * Math.Abs(exact[^1]));
        double hpp = double.Parse(lines["hutchpp"][0], CultureInfo.InvariantCulture), hppSe = double.Parse(lines["hutchpp"][1], CultureInfo.InvariantCulture);
        Assert.True(Math.Abs(hpp - exact.Sum()) <= 4 * hppSe + 1e-9 * Math.Abs(exact.Sum()), $"Hutch++ trace {hpp} ± {hppSe}, exact {exact.Sum()}");
    }

    /// <summary>The app's module, again (the app is built on its own, from its own copy).</summary>
    sealed class Residual : nn.Module<Tensor, Tensor>
    {
        readonly TorchSharp.Modules.Linear hidden, head, skip;
        public Residual(int inputs, int width, int classes) : base("Residual")
        {
            hidden = nn.Linear(inputs, width);
            head = nn.Linear(width, classes);
            skip = nn.Linear(inputs, classes, hasBias: false);
            RegisterComponents();
        }
        public override Tensor forward(Tensor x) => head.call(tanh(hidden.call(x))) + skip.call(x);
    }
}
