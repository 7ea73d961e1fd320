from bundle.curation.curate import (
    PROJECTIONS,
    Curation,
    cluster_classes,
    curate_embeddings,
    curation_encoder,
    curation_summary,
    flag_scans,
    k_distance_eps,
    reduce_embeddings,
    write_curated_datalist,
    write_curation,
)
