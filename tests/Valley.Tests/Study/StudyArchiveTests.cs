using System.Text.Json;
using Valley.Data;
using Valley.Models;
using Valley.Runs;
using Valley.Study;
using Xunit;

namespace Valley.Tests.Study;

public class StudyArchiveTests
{
    public StudyArchiveTests() => TestUtil.Init();

    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "TorchScript", name);

    [Fact]
    public void StudyOfAnArchiveStartsEveryModelFromTheArchivesWeightsAndWritesItsStateDicts()
    {
        var arrays = NumPyFile.Read(Fixture("mlp_twin_data.npz"));
        var train = new Dataset("twin-train", arrays["x"].narrow(0, 0, 48).clone(), arrays["y"].narrow(0, 0, 48).clone(), TaskKind.Classification, 3);
        var test = new Dataset("twin-test", arrays["x"].narrow(0, 48, 16).clone(), arrays["y"].narrow(0, 48, 16).clone(), TaskKind.Classification, 3);
        using var split = new DataSplit(train, test);
        var o = new StudyOptions
        {
            Preset = "quick", Model = Fixture("mlp_twin.pt"), TrainExamples = 0, TestExamples = 0, StopAtLoss = 0.001, MaxEpochs = 1, MeasureExamples = 32,
            DensityRuns = 1, DensitySteps = 5, MaxProducts = 20, SlicePoints = 3, ContourPoints = 3, ParametricPoints = 3,
            Models = [new("adam-b16-s0", "adam", 16, 1e-2, 0), new("sam-b16-s1", "sam", 16, 0.05, 1, 0.05)],
        };
        var dir = TestUtil.TempDir("study-archive");
        var summary = StudyRunner.Run(o, split, dir);
        Assert.Equal(2, summary.Models.Count);
        string initial;
        using (var archive = TorchScriptModel.Load(Fixture("mlp_twin.pt"))) initial = RunInputs.Digest(archive);
        foreach (var m in o.Models)
        {
            var log = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "models", m.Name, "train.json"))).RootElement;
            // Both seeds start from the archive's own weights (an archive has no seeded initialization).
            Assert.Contains(initial, log.GetProperty("inputs").ToString());
            Assert.Contains("TorchScript sha256:", log.GetProperty("model").GetString());
            using var fresh = TorchScriptModel.Load(Fixture("mlp_twin.pt"));
            Weights.Load(fresh, Path.Combine(dir, "models", m.Name, "model.pt"));
            Assert.NotEqual(initial, RunInputs.Digest(fresh));
        }
        Assert.All(summary.Models, m => Assert.True(m.Measures.ContainsKey("pacbayes_flatness") && m.Measures.ContainsKey("lambda_max")));
    }
}
