using System.Diagnostics;
using Valley.Curvature;
using Valley.Data;
using Valley.Landscape;
using Valley.Models;
using Valley.Reporting;
using Xunit;
using static TorchSharp.torch;

namespace Valley.Tests.Landscape;

public class LandscapeTests
{
    public LandscapeTests() => TestUtil.Init();

    static ParameterSet All(nn.Module m) => new(m.named_parameters().Select(p => (p.name, p.parameter)));
    static byte[] Bytes(nn.Module m) => m.state_dict().Values.SelectMany(t => t.contiguous().bytes.ToArray()).ToArray();

    [Fact]
    public void FilterNormalizedDirectionHasTheWeightFilterNormsAndZeroBiasBn()
    {
        using var data = Synthetic.GaussianMixture(8, 6, 3, seed: 1);
        foreach (var spec in new[] { "mlp:6-9-3", "resnet:2" })
        {
            var model = spec == "resnet:2" ? ModelSpec.Parse(spec).Build([1, 28, 28], 10, 1) : ModelSpec.Parse(spec).Build(data, 1);
            var ps = All(model);
            var d = Directions.Random(ps, DirectionNormalization.Filter, includeBiasBn: false, seed: 3);
            var dv = ps.Unflatten(d);
            for (int i = 0; i < dv.Length; i++)
            {
                var w = ps.Tensors[i].detach().to(ScalarType.Float64);
                if (w.dim() <= 1) { Assert.Equal(0.0, dv[i].abs().sum().ToDouble()); continue; }
                var dn = dv[i].reshape(dv[i].shape[0], -1).norm(1);
                var wn = w.reshape(w.shape[0], -1).norm(1);
                Assert.True((dn - wn).abs().max().ToDouble() < 1e-8 * Math.Max(1, wn.max().ToDouble()), $"{spec} {ps.Names[i]}");
            }
            var withBias = ps.Unflatten(Directions.Random(ps, DirectionNormalization.Filter, includeBiasBn: true, seed: 3));
            int bi = ps.Shapes.ToList().FindIndex(s => s.Length == 1);
            Assert.True((withBias[bi] - ps.Tensors[bi].detach().to(ScalarType.Float64)).abs().max().ToDouble() == 0);
        }
    }

    [Fact]
    public void OneDimensionalSliceOfAQuadraticIsTheAnalyticParabolaAndWeightsAreRestored()
    {
        var g = new Generator(2);
        var m = randn([5, 5], dtype: ScalarType.Float64, generator: g);
        var A = m.matmul(m.t());
        var w0 = randn(5, dtype: ScalarType.Float64, generator: g);
        var model = new QuadraticModule(A, zeros(5, dtype: ScalarType.Float64), w0);
        using var data = new Dataset("dummy", zeros([4, 1], dtype: ScalarType.Float64), zeros([4], dtype: ScalarType.Float64), TaskKind.Regression, 1);
        var d = randn(5, dtype: ScalarType.Float64, generator: g);
        var before = Bytes(model);
        var result = new LandscapeEvaluator(model, QuadraticModule.MeanOutput, data, null).Run(d, null, new GridSpec(GridSpec.Range(-1, 1, 21), null));
        foreach (var p in result.Points)
        {
            var w = w0 + p.X * d;
            Assert.Equal(0.5 * w.dot(A.matmul(w)).ToDouble(), p.TrainLoss, 12);
        }
        Assert.Equal(before, Bytes(model));
    }

    [Fact]
    public void InterpolationEndpointsAreExactlyTheModelsAndTheGridCentreIsTheUnperturbedLoss()
    {
        using var data = Synthetic.GaussianMixture(64, 6, 3, seed: 4);
        var dir = TestUtil.TempDir("interp");
        var a = ModelSpec.Parse("mlp:6-8-3").Build(data, 1);
        var b = ModelSpec.Parse("mlp:6-8-3").Build(data, 2);
        Weights.Save(a, Path.Combine(dir, "a.dat"));
        Weights.Save(b, Path.Combine(dir, "b.dat"));
        double La, Lb;
        using (var oa = new Objective(a, Losses.CrossEntropy, data)) La = oa.Value();
        using (var ob = new Objective(b, Losses.CrossEntropy, data)) Lb = ob.Value();
        var model = ModelSpec.Parse("mlp:6-8-3").Build(data, 3);
        var r = LandscapeRunner.Run(model, data, null, new LandscapeRequest
        {
            Mode = LandscapeMode.Interpolate, OutDir = Path.Combine(dir, "out"), Model = "mlp:6-8-3", From = Path.Combine(dir, "a.dat"), To = Path.Combine(dir, "b.dat"),
            Range = (-0.5, 1.5), Points = (9, 1),
        });
        Assert.Equal(La, r.Points.Single(p => p.X == 0).TrainLoss);
        Assert.Equal(Lb, r.Points.Single(p => p.X == 1).TrainLoss);
        // 2D centre: the unperturbed loss, exactly.
        var c = ModelSpec.Parse("mlp:6-8-3").Build(data, 1);
        var ps = All(c);
        var grid = new LandscapeEvaluator(c, Losses.CrossEntropy, data, null).Run(Directions.Random(ps, DirectionNormalization.Filter, false, 1),
            Directions.Random(ps, DirectionNormalization.Filter, false, 2), new GridSpec(GridSpec.Range(-1, 1, 5), GridSpec.Range(-1, 1, 5)));
        Assert.Equal(La, grid.Points.Single(p => p.X == 0 && p.Y == 0).TrainLoss);
    }

    [Fact]
    public void AGridInterruptedAfterSomePointsResumesToTheSameGrid()
    {
        using var data = Synthetic.GaussianMixture(64, 6, 3, seed: 5);
        var model = ModelSpec.Parse("mlp:6-8-3").Build(data, 1);
        var ps = All(model);
        var d1 = Directions.Random(ps, DirectionNormalization.Filter, false, 1);
        var d2 = Directions.Random(ps, DirectionNormalization.Filter, false, 2);
        var spec = new GridSpec(GridSpec.Range(-1, 1, 7), GridSpec.Range(-1, 1, 6));
        var ev = new LandscapeEvaluator(model, Losses.CrossEntropy, data, data);
        var full = ev.Run(d1, d2, spec);
        // Points go to a points file as they finish (as valley landscape writes them), and a rerun resumes from the file.
        var file = Path.Combine(TestUtil.TempDir("resume"), "points.csv");
        using (var cts = new CancellationTokenSource())
        using (var writer = PointsFile.OpenForAppend(file, []))
            Assert.ThrowsAny<OperationCanceledException>(() => ev.Run(d1, d2, spec, pointsDone: pts => { foreach (var p in pts) writer.WriteLine(PointsFile.Format(p)); writer.Flush(); },
                progress: new Valley.Curvature.Spectrum.SyncProgress<(int Done, int Total)>(p => { if (p.Done == 17) cts.Cancel(); }), ct: cts.Token));
        // A torn last line, as a kill in the middle of a write leaves it, is ignored, and cut off before the next append.
        File.AppendAllText(file, "3,2,0.1");
        var earlier = PointsFile.Read(file, spec);
        Assert.Equal(17, earlier.Count);
        using (var writer = PointsFile.OpenForAppend(file, File.ReadAllBytes(file)))
        {
            var resumed = ev.Run(d1, d2, spec, earlier, pts => { foreach (var p in pts) writer.WriteLine(PointsFile.Format(p)); });
            Assert.Equal(17, resumed.Resumed);
            Assert.Equal(full.Points, resumed.Points);
        }
        Assert.Equal(full.Points, PointsFile.Read(file, spec).Values.OrderBy(p => p.J).ThenBy(p => p.I));
    }

    /// <summary>A frozen layer stays where it is: directions over the trainable parameters move them, and only them.</summary>
    [Fact]
    public void AFrozenLayerIsNotMovedAndItsDirectionsFitTheTrainableParameters()
    {
        using var data = Synthetic.GaussianMixture(64, 6, 3, seed: 5);
        var model = ModelSpec.Parse("mlp:6-8-3").Build(data, 1);
        var first = model.named_parameters().Where(p => p.name.StartsWith("0.")).Select(p => p.parameter).ToList();
        foreach (var p in first) p.requires_grad = false;
        var frozen = first.Select(p => p.detach().clone()).ToList();
        var grid = LossLandscape.Slice1D(model, Losses.CrossEntropy, data, new SliceOptions { Points = 5 });
        Assert.Equal(5, grid.Points.Count);
        Assert.True(grid.Points.Select(p => p.TrainLoss).Distinct().Count() > 1);
        for (int i = 0; i < first.Count; i++) Assert.True(first[i].allclose(frozen[i], 0, 0));
        // Moving only the last layer gives a different slice than moving every layer.
        foreach (var p in first) p.requires_grad = true;
        var all = LossLandscape.Slice1D(model, Losses.CrossEntropy, data, new SliceOptions { Points = 5 });
        Assert.NotEqual(grid.Points.Select(p => p.TrainLoss), all.Points.Select(p => p.TrainLoss));
    }

    [Fact]
    public void TrajectoryPcaOfCheckpointsInAKnownPlaneExplainsAllVarianceAndProjectsExactly()
    {
        var g = new Generator(6);
        var (q, _) = linalg.qr(randn([200, 2], dtype: ScalarType.Float64, generator: g));
        var u = q[.., 0]; var v = q[.., 1];
        var final = randn(200, dtype: ScalarType.Float64, generator: g);
        var coords = Enumerable.Range(0, 12).Select(t => (3.0 * Math.Cos(t * 0.4), 1.0 * Math.Sin(t * 0.7) + 0.2 * t)).ToList();
        var cps = coords.Select(c => final + c.Item1 * u + c.Item2 * v).ToList();
        var pca = Directions.Pca(cps, final);
        Assert.True(pca.ExplainedVariance.Sum() > 1 - 1e-10);
        // Coordinates match up to a rotation within the plane: distances between checkpoints are preserved.
        for (int a = 0; a < cps.Count; a++)
            for (int b = 0; b < cps.Count; b++)
            {
                double dTrue = Math.Sqrt(Math.Pow(coords[a].Item1 - coords[b].Item1, 2) + Math.Pow(coords[a].Item2 - coords[b].Item2, 2));
                double dPca = Math.Sqrt(Math.Pow(pca.X[a] - pca.X[b], 2) + Math.Pow(pca.Y[a] - pca.Y[b], 2));
                Assert.Equal(dTrue, dPca, 9);
            }
        // And each projection is the dot product with the directions, which lie in the plane.
        Assert.Equal(1.0, Math.Pow(pca.Direction1.dot(u).ToDouble(), 2) + Math.Pow(pca.Direction1.dot(v).ToDouble(), 2), 9);
    }

    [Fact]
    public void SurfaceHtmlLoadsNothingFromTheNetworkEscapesTitlesAndRendersInHeadlessChromium()
    {
        var spec = new GridSpec(GridSpec.Range(-1, 1, 5), GridSpec.Range(-1, 1, 5));
        var pts = new List<GridPoint>();
        for (int j = 0; j < 5; j++) for (int i = 0; i < 5; i++) pts.Add(new GridPoint(i, j, spec.Xs[i], spec.Ys![j], spec.Xs[i] * spec.Xs[i] + spec.Ys[j] * spec.Ys[j], null, null, null));
        var grid = new GridResult { Kind = "2d", Spec = spec, Points = pts };
        var html = LandscapeFigures.SurfaceHtml(grid, "evil</script><script>alert(1)</script>", new LandscapeView());
        Assert.DoesNotContain("<script>alert(1)", html);
        // The page's own markup references nothing remote (the inlined plotly.js mentions URLs in code it never runs here;
        // the Content-Security-Policy forbids any load anyway, which the render below exercises).
        var markup = html.Replace(Html.Plotly, "");
        Assert.DoesNotMatch(@"(src|href)\s*=\s*[""']?(https?:)?//", markup);
        Assert.DoesNotContain("@import", markup);
        Assert.Contains("default-src 'none'", html);
        var dir = TestUtil.TempDir("html");
        var path = Path.Combine(dir, "surface.html");
        File.WriteAllText(path, html);
        var script = Path.Combine(RepoRoot(), "scripts", "render-html.sh");
        if (!File.Exists("/usr/bin/chromium")) return; // scripts/test.sh installs Debian's chromium; without it only the static checks run
        var psi = new ProcessStartInfo("bash", [script, path, Path.Combine(dir, "shot.png")]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var dom = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.Contains("data-rendered=\"yes\"", dom);
        Assert.True(new FileInfo(Path.Combine(dir, "shot.png")).Length > 10_000);
    }

    internal static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "Valley.sln"))) d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }
}
