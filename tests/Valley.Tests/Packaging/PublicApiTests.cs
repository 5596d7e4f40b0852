using System.Reflection;
using Xunit;

namespace Valley.Tests.Packaging;

/// <summary>
/// The libraries' public API is declared in PublicAPI.*.txt (PublicApiAnalyzers fails the build on any difference). This
/// test holds the wiring: every library carries the analyzer and its baseline files, and every exported type of the built
/// assemblies is in its project's baseline (a library without the analyzer, or with a baseline it does not read, fails).
/// </summary>
public class PublicApiTests
{
    static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Valley.sln"))) return d.FullName;
        throw new InvalidOperationException("Valley.sln not found");
    }

    [Theory]
    [InlineData("Valley", typeof(Valley.Curvature.Objective))]
    [InlineData("Valley.Reporting", typeof(Valley.Reporting.LandscapeRunner))]
    [InlineData("Valley.Mpi", typeof(Valley.Distributed.MpiProcessGroup))]
    [InlineData("Valley.Study", typeof(Valley.Study.StudyRunner))]
    public void EveryExportedTypeIsInTheLibrarysApiBaseline(string project, Type member)
    {
        string dir = Path.Combine(Root(), "src", project);
        var baseline = new[] { "PublicAPI.Shipped.txt", "PublicAPI.Unshipped.txt" }
            .SelectMany(f => File.ReadAllLines(Path.Combine(dir, f))).ToHashSet();
        Assembly assembly = member.Assembly;
        Assert.Equal(project, assembly.GetName().Name);
        var missing = assembly.GetExportedTypes().Select(t => (t.FullName ?? t.Name).Replace('+', '.'))
            .Select(name => name.Contains('`') ? name[..name.IndexOf('`')] : name)
            .Where(name => !baseline.Any(line => line == name || line.StartsWith(name + "<") || line.StartsWith(name + " ")))
            .ToList();
        Assert.True(missing.Count == 0, $"{project}: exported but not in PublicAPI.*.txt: {string.Join(", ", missing)}");
        // The analyzer reads the baseline: the build wires both files into every library that is packed (not the tool).
        var targets = File.ReadAllText(Path.Combine(Root(), "Directory.Build.targets"));
        Assert.Contains("Microsoft.CodeAnalysis.PublicApiAnalyzers", targets);
        Assert.Contains("PublicAPI.Unshipped.txt", targets);
        Assert.Contains("<IsPackable>true</IsPackable>", File.ReadAllText(Path.Combine(dir, project + ".csproj")));
    }
}
