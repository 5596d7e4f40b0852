using System.Text.RegularExpressions;
using Xunit;

namespace Valley.Tests.Reliability;

/// <summary>Rules of the code base that a test can hold: each broke a result once.</summary>
public class CodeRulesTests
{
    static string Root()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Valley.sln"))) return d.FullName;
        throw new InvalidOperationException("Valley.sln not found above " + AppContext.BaseDirectory);
    }

    /// <summary>
    /// torch.tensor(array) keeps the .NET array as the tensor's storage; its alignment depends on earlier allocations and
    /// MKL's float32 kernels depend on alignment, so results changed with, e.g., the length of an output folder's name.
    /// Tensors are made from arrays with OwnedTensor.From only.
    /// </summary>
    [Fact]
    public void NoTensorOfTheLibraryWrapsADotNetArray()
    {
        var call = new Regex(@"(?<![\w.])tensor\(", RegexOptions.Compiled);
        var offenders = Directory.EnumerateFiles(Path.Combine(Root(), "src"), "*.cs", SearchOption.AllDirectories)
            .SelectMany(f => File.ReadLines(f).Select((line, i) => (f, i, line)))
            .Where(x => !x.line.TrimStart().StartsWith("//") && !x.line.TrimStart().StartsWith("///") && call.IsMatch(x.line))
            .Select(x => $"{Path.GetRelativePath(Root(), x.f)}:{x.i + 1}: {x.line.Trim()}").ToList();
        Assert.True(offenders.Count == 0, "torch.tensor(array) in src (use OwnedTensor.From):\n" + string.Join("\n", offenders));
    }

    /// <summary>
    /// A clone holds the product: no file of it may send the reader to a document outside the repository (the design
    /// notes beside the project folder are not part of a clone; docs/design.md is).
    /// </summary>
    [Fact]
    public void NoFileOfTheProductRefersToADocumentOutsideTheRepository()
    {
        string root = Root();
        string[] forbidden = ["../" + "shared", "DESIGN" + ".md"];
        var files = new[] { "src", "scripts", "docs", "bench", ".ci" }.Select(d => Path.Combine(root, d)).Where(Directory.Exists)
            .SelectMany(d => Directory.EnumerateFiles(d, "*", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}") && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"))
            .Where(f => Path.GetExtension(f) is ".cs" or ".md" or ".sh" or ".csproj" or ".nuspec" or ".json" or "" && new FileInfo(f).Length < 1_000_000)
            .Append(Path.Combine(root, "README.md"));
        var offenders = files.SelectMany(f => File.ReadLines(f).Select((line, i) => (f, i, line)))
            .Where(x => forbidden.Any(x.line.Contains))
            .Select(x => $"{Path.GetRelativePath(root, x.f)}:{x.i + 1}: {x.line.Trim()}").ToList();
        Assert.True(offenders.Count == 0, "references to documents outside the repository:\n" + string.Join("\n", offenders));
    }
}
