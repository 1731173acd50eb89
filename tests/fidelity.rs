//! Fidelity: real pandas / scipy / scikit-learn / statsmodels work inside the
//! jail exactly as outside. One sandbox on the bundled penguins dataset, one
//! task per case.

mod common;

use common::*;
use csv_agent::sandbox::{CellResult, Sandbox};

async fn penguins_sandbox() -> Sandbox {
    Sandbox::start(options(&penguins()))
        .await
        .expect("sandbox starts")
}

async fn run(sb: &Sandbox, code: &str) -> CellResult {
    let mut task = sb.task();
    let cell = task.run_cell(code).await.expect("cell runs");
    assert_ok(&cell);
    cell
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_stack_works_inside_the_jail() {
    let sb = penguins_sandbox().await;

    // The zygote loaded the CSV as df, with NA as missing values.
    let c = run(&sb, "df.shape, int(df['sex'].isna().sum())").await;
    assert_eq!(c.result.as_deref(), Some("((344, 8), 11)"));

    // groupby / agg
    let c = run(
        &sb,
        "round(float(df.groupby('species')['body_mass_g'].mean().loc['Gentoo']), 2)",
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("5076.02"));

    // merge + pivot_table
    let c = run(
        &sb,
        r#"
sizes = df.groupby('island', as_index=False).size()
m = df.merge(sizes, on='island')
p = m.pivot_table(index='species', columns='island', values='size', aggfunc='first')
int(p.loc['Adelie', 'Biscoe'])"#,
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("168"));

    // resample on a datetime index
    let c = run(
        &sb,
        r#"
s = pd.Series(range(10), index=pd.date_range('2024-01-01', periods=10, freq='D'))
s.resample('W').sum().tolist()"#,
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("[21, 24]"));

    // scipy.stats tests
    let c = run(
        &sb,
        r#"
d = df.dropna(subset=['flipper_length_mm'])
a = d[d.species == 'Adelie'].flipper_length_mm
g = d[d.species == 'Gentoo'].flipper_length_mm
t = stats.ttest_ind(a, g, equal_var=False)
u = stats.mannwhitneyu(a, g)
r = stats.pearsonr(d.flipper_length_mm, d.body_mass_g)
(bool(t.pvalue < 1e-50), bool(u.pvalue < 1e-30), round(float(r.statistic), 3))"#,
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("(True, True, 0.871)"));

    // scikit-learn fit with joblib worker processes (loky) in the jail
    let c = run(
        &sb,
        r#"
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import cross_val_score
d = df.dropna()
X = d[['bill_length_mm', 'bill_depth_mm', 'flipper_length_mm', 'body_mass_g']]
scores = cross_val_score(RandomForestClassifier(n_estimators=20, random_state=0), X, d.species, cv=3, n_jobs=2)
bool(scores.mean() > 0.9)"#,
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("True"));

    // statsmodels OLS (formula API and sm.OLS)
    let c = run(
        &sb,
        r#"
import statsmodels.formula.api as smf
d = df.dropna()
m1 = smf.ols('body_mass_g ~ flipper_length_mm', data=d).fit()
m2 = sm.OLS(d.body_mass_g, sm.add_constant(d.flipper_length_mm)).fit()
(round(float(m1.rsquared), 3), bool(abs(m1.params.iloc[1] - m2.params.iloc[1]) < 1e-9))"#,
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("(0.762, True)"));

    // reading the CSV again from /data, writing and reading back in /tmp
    let path = sb.csv_path_in_jail().to_string();
    let c = run(
        &sb,
        &format!(
            r#"
again = pd.read_csv({path:?})
again.to_csv('/tmp/copy.csv', index=False)
back = pd.read_csv('/tmp/copy.csv')
(again.shape == df.shape, back.equals(again))"#
        ),
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("(True, True)"));

    // multiprocessing with /dev/shm semaphores
    let c = run(
        &sb,
        r#"
import multiprocessing as mp
with mp.Pool(2) as pool:
    out = pool.map(abs, [-1, -2, -3])
out"#,
    )
    .await;
    assert_eq!(c.result.as_deref(), Some("[1, 2, 3]"));

    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_and_hook_values_come_back_normalized_and_hashed() {
    let sb = penguins_sandbox().await;
    let c = run(
        &sb,
        r#"
m = df.groupby('species')['bill_length_mm'].mean()
hook(m, "m = df.groupby('species')['bill_length_mm'].mean()", name='m')
submit(m.idxmax())"#,
    )
    .await;
    let submitted = c.submitted.expect("submitted");
    assert_eq!(submitted["value"], "Chinstrap");
    assert_eq!(submitted["hash"].as_str().map(str::len), Some(16));
    assert_eq!(c.hooks.len(), 1);
    assert_eq!(c.hooks[0]["variable_name"], "m");
    assert!(c.hooks[0]["value"]["Gentoo"].as_f64().is_some());
    sb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tab_separated_and_latin1_files_load_as_df() {
    let dir = world_readable_dir();
    let tsv = write_csv(dir.path(), "data.csv", "a\tb\tc\n1\t2\tx\n3\t4\ty\n");
    let sb = Sandbox::start(options(&tsv)).await.expect("tsv starts");
    let c = run(&sb, "list(df.columns), df.shape").await;
    assert_eq!(c.result.as_deref(), Some("(['a', 'b', 'c'], (2, 3))"));
    sb.shutdown().await;

    let latin = dir.path().join("latin.csv");
    std::fs::write(&latin, b"name,city\nJos\xe9,M\xe1laga\n").expect("write");
    std::fs::set_permissions(&latin, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    let sb = Sandbox::start(options(&latin))
        .await
        .expect("latin-1 starts");
    let c = run(&sb, "df.loc[0, 'city']").await;
    assert_eq!(c.result.as_deref(), Some("'Málaga'"));
    sb.shutdown().await;
}
